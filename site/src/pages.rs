//! The site's pages: the same small site under every host name, each page
//! about 50 KB with its images (the bench's standard page), long enough to
//! scroll, with links to the host's other pages and to the other hosts.
//! Deterministic: a page is the same every time but for its view id.

use std::fmt::Write;

/// Article pages besides the home page: `/page/1` … `/page/ARTICLES`.
pub const ARTICLES: u32 = 6;
/// Images per full page.
const IMAGES_PER_PAGE: u32 = 4;
/// Distinct images served: `/img/0.bmp` … (each page shows four of them).
pub const IMAGES: u32 = 8;
const IMAGE_WIDTH: u32 = 96;
const IMAGE_HEIGHT: u32 = 32;
const SECTIONS: u32 = 8;

/// What a page links to beside its own host.
pub struct Links<'a> {
    /// The page's host.
    pub host: &'a str,
    /// `http://other:port/` of every other host of the site.
    pub others: &'a [String],
}

/// Which page a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/` and `/page/N`: the full pages.
    Article(u32),
    /// `/short`: fits in a viewport, so it cannot scroll.
    Short,
    /// `/no-links`: a full page with no link at all.
    NoLinks,
}

impl Page {
    pub fn from_path(path: &str) -> Option<Page> {
        match path {
            "/" => Some(Page::Article(0)),
            "/short" => Some(Page::Short),
            "/no-links" => Some(Page::NoLinks),
            _ => path
                .strip_prefix("/page/")
                .and_then(|n| n.parse().ok())
                .filter(|n| (1..=ARTICLES).contains(n))
                .map(Page::Article),
        }
    }
}

/// The HTML of `page` as page view `view`.
pub fn html(page: Page, view: &str, links: &Links<'_>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let (title, number) = match page {
        Page::Article(0) => ("Home".to_owned(), 0),
        Page::Article(n) => (format!("Article {n}"), n),
        Page::Short => ("A short page".to_owned(), ARTICLES + 1),
        Page::NoLinks => ("A page without links".to_owned(), ARTICLES + 2),
    };
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · {host}</title>\
         <style>body{{font:17px/1.65 system-ui,sans-serif;max-width:44rem;margin:0 auto;padding:1rem;color:#222}}\
         nav a,footer a{{margin-right:1rem}}img{{display:block;width:100%;height:auto;margin:1.5rem 0;image-rendering:pixelated}}\
         section{{margin:2rem 0}}</style>\
         <script>window.__tb={{view:\"{view}\"}};</script>\
         <script src=\"/tb/tracker.js\" defer></script></head><body>\n",
        host = links.host,
    );
    let with_links = page != Page::NoLinks;
    if with_links {
        nav(&mut h);
    }
    let _ = writeln!(h, "<h1>{title}</h1>");
    match page {
        Page::Short => {
            h.push_str(
                "<p>Nothing more to read here; back to the <a href=\"/\">home page</a>.</p>\n",
            );
        }
        _ => body(&mut h, number, links, with_links),
    }
    if with_links {
        footer(&mut h, links);
    }
    h.push_str("</body></html>\n");
    h
}

fn nav(h: &mut String) {
    h.push_str("<nav><a href=\"/\">Home</a>");
    for n in 1..=ARTICLES {
        let _ = write!(h, "<a href=\"/page/{n}\">Article {n}</a>");
    }
    h.push_str("</nav>\n");
}

fn footer(h: &mut String, links: &Links<'_>) {
    h.push_str("<footer><p>Friends of this site:</p>");
    for other in links.others {
        let _ = write!(h, "<a href=\"{other}\">{other}</a>");
    }
    h.push_str("</footer>\n");
}

/// Sections of text with the page's images between them, and links
/// through the text so some are in view wherever the page is scrolled.
fn body(h: &mut String, page: u32, links: &Links<'_>, with_links: bool) {
    let mut words = Words::new(page);
    let image_every = SECTIONS / IMAGES_PER_PAGE;
    for s in 0..SECTIONS {
        let _ = write!(
            h,
            "<section><h2>{}</h2>",
            words.sentence(3, 6).trim_end_matches('.')
        );
        for p in 0..3 {
            h.push_str("<p>");
            h.push_str(&words.paragraph());
            if with_links && p == 1 {
                let next = (page + s) % ARTICLES + 1;
                let _ = write!(
                    h,
                    " Read on in <a href=\"/page/{next}\">article {next}</a>."
                );
                if let Some(other) = links.others.get((s as usize) % links.others.len().max(1)) {
                    let _ = write!(h, " Or visit <a href=\"{other}\">a friend's site</a>.");
                }
            }
            h.push_str("</p>");
        }
        if s % image_every == 0 {
            let image = (page * IMAGES_PER_PAGE + s / image_every) % IMAGES;
            let _ = write!(
                h,
                "<img src=\"/img/{image}.bmp\" width=\"{IMAGE_WIDTH}\" height=\"{IMAGE_HEIGHT}\" alt=\"Figure {image}\">"
            );
        }
        h.push_str("</section>\n");
    }
}

/// Words for filler text, drawn by a small fixed generator so each page
/// reads the same every time.
struct Words(u64);

const VOCABULARY: &[&str] = &[
    "traffic", "garden", "river", "window", "morning", "quiet", "measure", "orange", "harbour",
    "lantern", "paper", "signal", "winter", "bridge", "copper", "meadow", "station", "thread",
    "mirror", "summer", "engine", "valley", "letter", "compass", "forest", "market", "island",
    "ladder", "violet", "anchor", "shadow", "canvas", "marble", "pocket", "timber", "feather",
    "the", "a", "of", "and", "in", "to", "with", "over", "under", "near", "between", "slowly",
];

impl Words {
    fn new(seed: u32) -> Self {
        Words(u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self, below: usize) -> usize {
        // xorshift64: enough for filler text.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }

    fn sentence(&mut self, min: usize, max: usize) -> String {
        let n = min + self.next(max - min + 1);
        let mut s: String = (0..n)
            .map(|_| VOCABULARY[self.next(VOCABULARY.len())])
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(first) = s.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        s.push('.');
        s
    }

    fn paragraph(&mut self) -> String {
        let n = 3 + self.next(4);
        (0..n)
            .map(|_| self.sentence(6, 14))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Image `n`: an uncompressed 24-bit BMP (about 9 KB), a gradient of its own.
pub fn image(n: u32) -> Vec<u8> {
    let row = (IMAGE_WIDTH * 3).next_multiple_of(4);
    let size = 54 + row * IMAGE_HEIGHT;
    let mut b = Vec::with_capacity(size as usize);
    b.extend_from_slice(b"BM");
    for v in [size, 0, 54, 40] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(IMAGE_WIDTH as i32).to_le_bytes());
    b.extend_from_slice(&(IMAGE_HEIGHT as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    for v in [0u32, row * IMAGE_HEIGHT, 2_835, 2_835, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for y in 0..IMAGE_HEIGHT {
        for x in 0..IMAGE_WIDTH {
            let (x8, y8) = (
                (x * 255 / IMAGE_WIDTH) as u8,
                (y * 255 / IMAGE_HEIGHT) as u8,
            );
            b.extend_from_slice(&[x8, y8, (n as u8).wrapping_mul(37) ^ x8 ^ y8]);
        }
        b.resize(b.len() + (row - IMAGE_WIDTH * 3) as usize, 0);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> (String, Vec<String>) {
        (
            "a.test".into(),
            vec!["http://b.test:8080/".into(), "http://c.test:8080/".into()],
        )
    }

    #[test]
    fn paths_name_pages_and_nothing_else() {
        assert_eq!(Page::from_path("/"), Some(Page::Article(0)));
        assert_eq!(Page::from_path("/page/6"), Some(Page::Article(6)));
        assert_eq!(Page::from_path("/page/7"), None);
        assert_eq!(Page::from_path("/page/0"), None);
        assert_eq!(Page::from_path("/page/x"), None);
        assert_eq!(Page::from_path("/short"), Some(Page::Short));
        assert_eq!(Page::from_path("/nope"), None);
    }

    #[test]
    fn a_full_page_with_its_images_weighs_about_50_kb() {
        let (host, others) = links();
        let links = Links {
            host: &host,
            others: &others,
        };
        for n in 0..=ARTICLES {
            let html = html(Page::Article(n), "v1", &links);
            let images = html.matches("<img ").count();
            assert_eq!(images, IMAGES_PER_PAGE as usize);
            let total = html.len() + images * image(0).len();
            assert!((40_000..65_000).contains(&total), "page {n}: {total} bytes");
        }
    }

    #[test]
    fn pages_link_inside_the_host_and_out_to_every_other_host() {
        let (host, others) = links();
        let links = Links {
            host: &host,
            others: &others,
        };
        let html = html(Page::Article(2), "v9", &links);
        assert!(html.contains("window.__tb={view:\"v9\"}"));
        assert!(html.contains("href=\"/page/1\""));
        for other in &others {
            assert!(
                html.matches(&format!("href=\"{other}\"")).count() >= 2,
                "{other}"
            );
        }
        let bare = super::html(Page::NoLinks, "v2", &links);
        assert!(!bare.contains("<a "), "a page without links has a link");
    }

    #[test]
    fn images_are_well_formed_bitmaps_that_differ() {
        let (a, b) = (image(0), image(1));
        assert_eq!(&a[..2], b"BM");
        assert_eq!(
            u32::from_le_bytes(a[2..6].try_into().unwrap()) as usize,
            a.len()
        );
        assert_eq!(a.len(), b.len());
        assert_ne!(a, b);
    }
}
