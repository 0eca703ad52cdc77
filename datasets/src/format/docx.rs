//! docx (targets only): the URLs of a Word document — its hyperlinks (their
//! relationship targets, or HYPERLINK fields) and the lines of its paragraphs
//! that are URLs. Other text is skipped; a document with no URL at all is an
//! error. A row's line is its paragraph's number; a URL found twice counts once.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};

use domain::ImportFormat;
use quick_xml::XmlVersion;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use zip::ZipArchive;

use crate::error::ImportError;
use crate::record::{Cell, Collector, Fields, own_labels};
use crate::rows::Rows;
use crate::target::Target;

const DOCUMENT: &str = "word/document.xml";
const RELATIONSHIPS: &str = "word/_rels/document.xml.rels";

fn not(why: impl Into<String>) -> ImportError {
    ImportError::not(ImportFormat::Docx, why)
}

pub(crate) fn read(bytes: &[u8]) -> Result<Rows, ImportError> {
    let mut archive = super::archive::open(ImportFormat::Docx, bytes)?;
    let document = entry(&mut archive, DOCUMENT)?.ok_or_else(|| {
        not(format!(
            "a zip archive without {DOCUMENT}: not a Word document"
        ))
    })?;
    let links = match entry(&mut archive, RELATIONSHIPS)? {
        Some(xml) => relationships(&xml)?,
        None => HashMap::new(),
    };
    let found = urls(&document, &links)?;
    if found.is_empty() {
        return Err(ImportError::Empty);
    }
    let labels = own_labels(<Target as crate::record::Row>::COLUMNS);
    let mut rows = Collector::<Target>::new();
    let mut seen = HashSet::new();
    for (paragraph, url) in found {
        if seen.insert(url.clone()) {
            let mut fields =
                Fields::new(paragraph, <Target as crate::record::Row>::COLUMNS, &labels);
            fields.set(Target::URL, Cell::Text(url));
            rows.push(fields);
        }
    }
    rows.finish()
}

/// An entry's text, if the archive has it.
fn entry(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    name: &str,
) -> Result<Option<String>, ImportError> {
    let mut file = match archive.by_name(name) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(not(format!("{name} cannot be read ({e})"))),
    };
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| not(format!("{name} is not UTF-8 XML ({e})")))?;
    Ok(Some(text))
}

fn damaged(name: &str, e: impl std::fmt::Display) -> ImportError {
    not(format!("{name} is not well-formed XML ({e})"))
}

/// Relationship id → target, for the document's external links.
fn relationships(xml: &str) -> Result<HashMap<String, String>, ImportError> {
    let mut reader = Reader::from_str(xml);
    let mut links = HashMap::new();
    loop {
        match reader.read_event().map_err(|e| damaged(RELATIONSHIPS, e))? {
            Event::Eof => return Ok(links),
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "Relationship" => {
                if let (Some(id), Some(target)) = (
                    attribute(RELATIONSHIPS, &e, "Id")?,
                    attribute(RELATIONSHIPS, &e, "Target")?,
                ) {
                    links.insert(id, target);
                }
            }
            _ => {}
        }
    }
}

/// An attribute's unescaped value, by local name (any prefix).
fn attribute(part: &str, e: &BytesStart<'_>, name: &str) -> Result<Option<String>, ImportError> {
    for attr in e.attributes() {
        let attr = attr.map_err(|e| damaged(part, e))?;
        if attr.key.local_name().as_ref() == name {
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| damaged(part, e))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

/// Where the reader is in WordprocessingML.
#[derive(Clone, Copy, PartialEq)]
enum Inside {
    Other,
    /// `w:t`: a run's text.
    Text,
    /// `w:instrText`: a field's instruction (`HYPERLINK "…"`).
    Instruction,
}

/// One paragraph being read: its number, its text so far, its field code.
struct Paragraph {
    number: u64,
    text: String,
    instruction: String,
}

/// Candidate URLs in document order, each with its paragraph's number.
fn urls(xml: &str, links: &HashMap<String, String>) -> Result<Vec<(u64, String)>, ImportError> {
    let mut reader = Reader::from_str(xml);
    let mut found = Vec::new();
    // Paragraphs nest (a text box inside a paragraph holds its own).
    let mut open: Vec<Paragraph> = Vec::new();
    let mut numbered = 0u64;
    let mut inside = Inside::Other;
    let mut depth = 0usize;
    let mut root = true;
    loop {
        let event = reader.read_event().map_err(|e| damaged(DOCUMENT, e))?;
        if let Event::Start(e) | Event::Empty(e) = &event
            && std::mem::take(&mut root)
            && e.local_name().as_ref() != "document"
        {
            return Err(not(format!(
                "{DOCUMENT} is not a WordprocessingML document"
            )));
        }
        match &event {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
        match event {
            Event::Eof if depth > 0 || root => {
                return Err(damaged(DOCUMENT, "it ends before its elements close"));
            }
            Event::Eof => break,
            Event::Start(e) => match e.local_name().as_ref() {
                "p" => {
                    numbered += 1;
                    let (text, instruction) = (String::new(), String::new());
                    open.push(Paragraph {
                        number: numbered,
                        text,
                        instruction,
                    });
                }
                "t" => inside = Inside::Text,
                "instrText" => inside = Inside::Instruction,
                _ => element(&e, &mut open, links, &mut found)?,
            },
            Event::Empty(e) => match e.local_name().as_ref() {
                // An empty paragraph still counts, so numbers match what Word shows.
                "p" => numbered += 1,
                _ => element(&e, &mut open, links, &mut found)?,
            },
            Event::Text(t) => push(&mut open, inside, &t.xml10_content()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| damaged(DOCUMENT, e))? {
                    Some(c) => c.to_string(),
                    None => resolve_predefined_entity(&r).unwrap_or_default().to_owned(),
                };
                push(&mut open, inside, &resolved);
            }
            Event::End(e) => match e.local_name().as_ref() {
                "t" | "instrText" => inside = Inside::Other,
                "p" => {
                    if let Some(p) = open.pop() {
                        found.extend(paragraph_urls(&p));
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    Ok(found)
}

/// An element that adds to the paragraph it is in: a tab, a break, a hyperlink.
fn element(
    e: &BytesStart<'_>,
    open: &mut [Paragraph],
    links: &HashMap<String, String>,
    found: &mut Vec<(u64, String)>,
) -> Result<(), ImportError> {
    match e.local_name().as_ref() {
        "tab" => push(open, Inside::Text, "\t"),
        "br" | "cr" => push(open, Inside::Text, "\n"),
        "hyperlink" => {
            let target = attribute(DOCUMENT, e, "id")?.and_then(|id| links.get(&id));
            if let (Some(url), Some(p)) = (target, open.last())
                && is_url_line(url)
            {
                found.push((p.number, url.clone()));
            }
        }
        _ => {}
    }
    Ok(())
}

fn push(open: &mut [Paragraph], inside: Inside, text: &str) {
    if let Some(p) = open.last_mut() {
        match inside {
            Inside::Text => p.text.push_str(text),
            Inside::Instruction => p.instruction.push_str(text),
            Inside::Other => {}
        }
    }
}

/// A paragraph's HYPERLINK field and its lines that are URLs.
fn paragraph_urls(p: &Paragraph) -> impl Iterator<Item = (u64, String)> + '_ {
    let field = p
        .instruction
        .trim()
        .strip_prefix("HYPERLINK")
        .and_then(|rest| rest.trim().strip_prefix('"'))
        .and_then(|rest| rest.split_once('"'))
        .map(|(url, _)| url.to_owned())
        .filter(|url| is_url_line(url));
    let lines = p
        .text
        .split('\n')
        .map(str::trim)
        .filter(|line| is_url_line(line))
        .map(str::to_owned);
    field.into_iter().chain(lines).map(|url| (p.number, url))
}

/// A line (or link) meant as a target: an http(s) address and nothing else.
/// It is still validated as a target; other lines and links are skipped.
fn is_url_line(line: &str) -> bool {
    let lower = line.get(..8).unwrap_or(line).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://"))
        && !line.contains(char::is_whitespace)
}
