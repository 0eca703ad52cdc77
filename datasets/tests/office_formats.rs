//! xlsx and docx imports, from files written here: workbooks by
//! rust_xlsxwriter, Word documents as Word writes them (a zip of
//! WordprocessingML with its relationships).

use std::io::Write;

use datasets::{ImportError, ImportOptions, Os, ProxyScheme, RowError, Rows, parse};
use domain::{DatasetKind, ImportFormat};
use rust_xlsxwriter::Workbook;
use zip::write::SimpleFileOptions;

enum X {
    S(&'static str),
    N(f64),
    B(bool),
    Blank,
}
use X::{B, Blank, N, S};

/// A workbook whose sheets hold these rows, from row `first` (0-based) on.
fn workbook(sheets: &[(&str, u32, Vec<Vec<X>>)]) -> Vec<u8> {
    let mut book = Workbook::new();
    for (name, first, rows) in sheets {
        let sheet = book.add_worksheet();
        sheet.set_name(*name).unwrap();
        for (r, row) in rows.iter().enumerate() {
            let r = first + r as u32;
            for (c, cell) in row.iter().enumerate() {
                let c = c as u16;
                match cell {
                    S(s) => sheet.write_string(r, c, *s).map(|_| ()),
                    N(n) => sheet.write_number(r, c, *n).map(|_| ()),
                    B(b) => sheet.write_boolean(r, c, *b).map(|_| ()),
                    Blank => Ok(()),
                }
                .unwrap();
            }
        }
    }
    book.save_to_buffer().unwrap()
}

fn import(kind: DatasetKind, format: ImportFormat, bytes: &[u8]) -> Result<Rows, ImportError> {
    parse(kind, format, bytes, &ImportOptions::default())
}

fn places(result: Result<Rows, ImportError>) -> Vec<(u64, Option<String>)> {
    match result {
        Err(ImportError::Rows { errors, .. }) => errors
            .iter()
            .map(|e: &RowError| (e.line, e.column.clone()))
            .collect(),
        other => panic!("expected row errors, got {other:?}"),
    }
}

fn at(line: u64, column: &str) -> (u64, Option<String>) {
    (line, Some(column.to_owned()))
}

#[test]
fn targets_from_the_first_sheet_of_a_workbook_with_numbers_as_numbers() {
    let bytes = workbook(&[
        (
            "Targets",
            2,
            vec![
                vec![
                    S("URL"),
                    S("Traffic Type"),
                    S("Source"),
                    S("Keyword"),
                    S("Flow target"),
                    S("Click target"),
                ],
                vec![
                    S("https://example.com/"),
                    S("organic"),
                    S("google"),
                    S("shoes"),
                    N(10.0),
                    N(2.0),
                ],
                vec![],
                vec![
                    S("https://example.com/b"),
                    Blank,
                    Blank,
                    Blank,
                    N(3.0),
                    Blank,
                ],
            ],
        ),
        ("Other", 0, vec![vec![S("ignored")]]),
    ]);
    let Rows::Targets(t) = import(DatasetKind::Targets, ImportFormat::Xlsx, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(t.len(), 2);
    assert_eq!(
        (t[0].keyword.as_deref(), t[0].flow_target, t[0].click_target),
        (Some("shoes"), 10, 2)
    );
    assert_eq!(
        (t[1].url.as_str(), t[1].flow_target),
        ("https://example.com/b", 3)
    );
}

#[test]
fn bad_cells_of_a_workbook_are_reported_at_their_sheet_rows() {
    let bytes = workbook(&[(
        "Sheet1",
        0,
        vec![
            vec![S("url"), S("flow_target"), S("click_target")],
            vec![S("https://example.com/"), N(2.5), N(0.0)],
            vec![S("example.com"), N(1.0), N(0.0)],
            vec![S("https://example.com/"), N(1.0), N(4.0), S("stray")],
        ],
    )]);
    assert_eq!(
        places(import(DatasetKind::Targets, ImportFormat::Xlsx, &bytes)),
        [at(2, "flow_target"), at(3, "url"), (4, None)]
    );
}

#[test]
fn a_workbook_with_a_wrong_column_names_it() {
    let bytes = workbook(&[(
        "Sheet1",
        0,
        vec![
            vec![S("url"), S("flow target"), S("colour")],
            vec![S("https://example.com/"), N(1.0), S("red")],
        ],
    )]);
    let result = import(DatasetKind::Targets, ImportFormat::Xlsx, &bytes);
    let Err(ImportError::Rows { errors, total: 1 }) = result else {
        panic!("{result:?}")
    };
    assert_eq!(
        (errors[0].line, errors[0].column.as_deref()),
        (1, Some("colour"))
    );
    assert!(
        errors[0].reason.starts_with("unknown column"),
        "{}",
        errors[0].reason
    );
}

#[test]
fn proxies_from_a_named_sheet_with_a_numeric_port() {
    let bytes = workbook(&[
        ("Notes", 0, vec![vec![S("see the other sheet")]]),
        (
            "Proxies",
            0,
            vec![
                vec![
                    S("scheme"),
                    S("host"),
                    S("port"),
                    S("username"),
                    S("password"),
                    S("region"),
                ],
                vec![
                    S("socks5"),
                    S("203.0.113.9"),
                    N(1080.0),
                    S("u"),
                    S("p"),
                    S("NL"),
                ],
                vec![
                    S("http"),
                    S("proxy.example.com"),
                    N(8080.0),
                    Blank,
                    Blank,
                    Blank,
                ],
            ],
        ),
    ]);
    let opts = ImportOptions {
        sheet: Some("Proxies".into()),
    };
    let Rows::Proxies(p) = parse(DatasetKind::Proxies, ImportFormat::Xlsx, &bytes, &opts).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (p[0].scheme, p[0].port, p[1].port),
        (ProxyScheme::Socks5, 1080, 8080)
    );

    let opts = ImportOptions {
        sheet: Some("Proxys".into()),
    };
    let result = parse(DatasetKind::Proxies, ImportFormat::Xlsx, &bytes, &opts);
    let Err(ImportError::NotThatFormat { why, .. }) = result else {
        panic!("{result:?}")
    };
    assert!(
        why.contains("no sheet \"Proxys\"") && why.contains("\"Notes\", \"Proxies\""),
        "{why}"
    );
}

#[test]
fn device_and_settings_profiles_from_workbooks() {
    let bytes = workbook(&[(
        "Platforms",
        0,
        vec![
            vec![
                S("Name"),
                S("OS"),
                S("Browser"),
                S("User Agent"),
                S("Viewport Width"),
                S("Viewport Height"),
                S("Device Scale Factor"),
                S("Touch"),
                S("Locale"),
                S("Timezone"),
            ],
            vec![
                S("iPad"),
                S("iPadOS"),
                S("Safari"),
                S("Mozilla/5.0 (iPad)"),
                N(820.0),
                N(1180.0),
                N(2.0),
                B(true),
                S("fr_FR"),
                S("Europe/Paris"),
            ],
        ],
    )]);
    let Rows::DeviceProfiles(d) =
        import(DatasetKind::DeviceProfiles, ImportFormat::Xlsx, &bytes).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (d[0].os, d[0].touch, d[0].locale.as_str()),
        (Os::Ios, true, "fr-FR")
    );

    let bytes = workbook(&[(
        "Settings",
        0,
        vec![
            vec![
                S("name"),
                S("session_min"),
                S("session_max"),
                S("clicks"),
                S("external_click_share"),
                S("instances"),
            ],
            vec![S("Busy"), N(30.0), N(60.0), B(true), N(0.5), N(12.0)],
        ],
    )]);
    let rows = import(DatasetKind::SettingsProfiles, ImportFormat::Xlsx, &bytes).unwrap();
    let summary = rows.summary();
    assert_eq!(
        (
            summary.max_instances,
            summary.human_surfing,
            summary.external_clicks
        ),
        (12, true, true)
    );
}

const W: &str = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";
const R: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";

/// A .docx as Word writes one: content types, package relationships, the
/// document and its relationships (the hyperlinks' targets).
fn docx(body: &str, links: &[(&str, &str)]) -> Vec<u8> {
    let document = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="{W}" xmlns:r="{R}"><w:body>{body}<w:sectPr><w:pgSz w:w="11906" w:h="16838"/></w:sectPr></w:body></w:document>"#
    );
    let mut rels = String::from(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/>"#,
    );
    for (id, url) in links {
        rels.push_str(&format!(
            r#"<Relationship Id="{id}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/hyperlink" Target="{url}" TargetMode="External"/>"#
        ));
    }
    rels.push_str("</Relationships>");
    zip_of(&[
        (
            "[Content_Types].xml",
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#,
        ),
        (
            "_rels/.rels",
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#,
        ),
        ("word/document.xml", &document),
        ("word/_rels/document.xml.rels", &rels),
    ])
}

fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in entries {
        zip.start_file(*name, SimpleFileOptions::default()).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A paragraph of runs, as Word splits text into runs.
fn p(runs: &[&str]) -> String {
    let runs: String = runs.iter().map(|t| format!(r#"<w:r><w:rPr><w:lang w:val="en-GB"/></w:rPr><w:t xml:space="preserve">{t}</w:t></w:r>"#)).collect();
    format!(r#"<w:p><w:pPr><w:pStyle w:val="Normal"/></w:pPr>{runs}</w:p>"#)
}

#[test]
fn targets_from_a_word_documents_lines_and_hyperlinks() {
    let body = [
        p(&["Sites to test this week:"]),
        p(&["https://exam", "ple.com/a?x=1&amp;y=2"]),
        r#"<w:p><w:r><w:t xml:space="preserve">Also see </w:t></w:r><w:hyperlink r:id="rId7" w:history="1"><w:r><w:rPr><w:rStyle w:val="Hyperlink"/></w:rPr><w:t>our shop</w:t></w:r></w:hyperlink><w:r><w:t>.</w:t></w:r></w:p>"#
        .to_owned(),
        r#"<w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText xml:space="preserve"> HYPERLINK "https://example.com/c" </w:instrText></w:r><w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>the blog</w:t></w:r><w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>"#.to_owned(),
        "<w:p/>".to_owned(),
        r#"<w:p><w:r><w:t>https://example.com/d</w:t><w:br/><w:t>https://example.com/e</w:t></w:r></w:p>"#.to_owned(),
        p(&["https://example.com/a?x=1&amp;y=2"]),
        r#"<w:p><w:hyperlink r:id="rId8"><w:r><w:t>write to us</w:t></w:r></w:hyperlink></w:p>"#.to_owned(),
    ]
    .concat();
    let bytes = docx(
        &body,
        &[
            ("rId7", "https://shop.example.com/"),
            ("rId8", "mailto:me@example.com"),
        ],
    );
    let Rows::Targets(t) = import(DatasetKind::Targets, ImportFormat::Docx, &bytes).unwrap() else {
        panic!()
    };
    let urls: Vec<&str> = t.iter().map(|t| t.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "https://example.com/a?x=1&y=2",
            "https://shop.example.com/",
            "https://example.com/c",
            "https://example.com/d",
            "https://example.com/e",
        ]
    );
}

#[test]
fn a_bad_url_in_a_word_document_is_reported_at_its_paragraph() {
    let body = [
        p(&["Intro"]),
        p(&["https://example.com/"]),
        p(&["https://"]),
        p(&["http://[::1"]),
    ]
    .concat();
    let bytes = docx(&body, &[]);
    assert_eq!(
        places(import(DatasetKind::Targets, ImportFormat::Docx, &bytes)),
        [at(3, "url"), at(4, "url")]
    );
}

#[test]
fn a_word_document_without_a_url_is_an_error() {
    let bytes = docx(&p(&["Nothing to see here."]), &[]);
    assert_eq!(
        import(DatasetKind::Targets, ImportFormat::Docx, &bytes),
        Err(ImportError::Empty)
    );
}

#[test]
fn a_docx_that_is_a_zip_of_junk_or_no_zip_is_not_a_docx() {
    let junk = zip_of(&[("notes.txt", "hello"), ("data.bin", "\u{1}\u{2}")]);
    let cases: [(&[u8], &str); 4] = [
        (&junk, "without word/document.xml"),
        (b"just some text", "not a zip archive"),
        (
            &zip_of(&[("word/document.xml", "<w:document><w:body><w:p>")]),
            "not well-formed",
        ),
        (
            b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1rest",
            "old binary Office file",
        ),
    ];
    for (bytes, expected) in cases {
        match import(DatasetKind::Targets, ImportFormat::Docx, bytes) {
            Err(ImportError::NotThatFormat {
                format: ImportFormat::Docx,
                why,
            }) => {
                assert!(why.contains(expected), "{why:?} should say {expected:?}")
            }
            other => panic!("{other:?}"),
        }
    }
    let result = import(DatasetKind::Targets, ImportFormat::Xlsx, &junk);
    assert!(
        matches!(
            result,
            Err(ImportError::NotThatFormat {
                format: ImportFormat::Xlsx,
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn only_targets_come_from_a_word_document() {
    let bytes = docx(&p(&["https://example.com/"]), &[]);
    for kind in [
        DatasetKind::Proxies,
        DatasetKind::DeviceProfiles,
        DatasetKind::SettingsProfiles,
    ] {
        assert!(matches!(
            import(kind, ImportFormat::Docx, &bytes),
            Err(ImportError::NotThatFormat { .. })
        ));
    }
}

#[test]
fn a_zip_bomb_is_refused_before_it_is_unpacked() {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("word/document.xml", SimpleFileOptions::default())
        .unwrap();
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..300 {
        zip.write_all(&zeros).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    assert!(bytes.len() < 2 << 20, "it packs small");
    match import(DatasetKind::Targets, ImportFormat::Docx, &bytes) {
        Err(ImportError::NotThatFormat { why, .. }) => {
            assert!(why.contains("unpacks to more than"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

/// A small deterministic generator: the same bytes on every run.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const FORMATS: [ImportFormat; 5] = [
    ImportFormat::Txt,
    ImportFormat::Csv,
    ImportFormat::Xlsx,
    ImportFormat::Docx,
    ImportFormat::Json,
];

#[test]
fn garbage_and_broken_files_are_errors_never_panics() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let real_xlsx = workbook(&[(
        "S",
        0,
        vec![vec![S("url")], vec![S("https://example.com/")]],
    )]);
    let real_docx = docx(&p(&["https://example.com/"]), &[]);
    for kind in DatasetKind::ALL {
        for format in FORMATS {
            for len in [0, 1, 3, 64, 1000, 20_000] {
                let bytes = rng.bytes(len);
                let result = import(kind, format, &bytes);
                assert!(
                    result.is_err(),
                    "{kind} {format:?} accepted {len} random bytes"
                );
            }
        }
        // Real archives cut short at many points, and damaged one bit at a time.
        for (format, real) in [
            (ImportFormat::Xlsx, &real_xlsx),
            (ImportFormat::Docx, &real_docx),
        ] {
            for cut in (0..real.len()).step_by(61) {
                assert!(
                    import(kind, format, &real[..cut]).is_err(),
                    "{kind} {format:?} cut at {cut}"
                );
            }
            for _ in 0..50 {
                let mut damaged = real.clone();
                let at = rng.next() as usize % damaged.len();
                damaged[at] ^= 1 << (rng.next() % 8);
                let _ = import(kind, format, &damaged);
            }
        }
    }
}
