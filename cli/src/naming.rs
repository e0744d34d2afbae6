//! Rust names for SQL names: structs, fields and enum variants.

/// Rust's keywords, which a field cannot be named without `r#`.
const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "type",
    "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// The words of a name: split on anything not a letter or digit, and at lower-to-upper case
/// changes.
fn words(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `film_actor` → `FilmActor`; `PG-13` → `Pg13`. A name starting with a digit gets a `V`.
pub fn pascal(name: &str) -> String {
    let mut out: String = words(name)
        .iter()
        .map(|w| {
            let lower = w.to_lowercase();
            let mut c = lower.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'V');
    }
    out
}

/// A field name for a column: the column's name when it is a valid snake_case identifier
/// (`r#type` for a keyword), else its words in snake_case; `Some(column)` when the field needs
/// `#[orm(column_name = "…")]`.
pub fn field(column: &str) -> (String, Option<String>) {
    let valid = !column.is_empty()
        && column
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !column.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        let name = if KEYWORDS.contains(&column) {
            format!("r#{column}")
        } else {
            column.to_owned()
        };
        return (name, None);
    }
    let mut name = words(column)
        .iter()
        .map(|w| w.to_lowercase())
        .collect::<Vec<_>>()
        .join("_");
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "c_");
    }
    if KEYWORDS.contains(&name.as_str()) {
        name.insert_str(0, "r#");
    }
    (name, Some(column.to_owned()))
}

/// The label `#[derive(DbEnum)]` gives a variant by default: its name in snake_case.
pub fn default_label(variant: &str) -> String {
    let mut out = String::new();
    for (i, c) in variant.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rust_conventions() {
        assert_eq!(pascal("film_actor"), "FilmActor");
        assert_eq!(pascal("PG-13"), "Pg13");
        assert_eq!(pascal("NC-17"), "Nc17");
        assert_eq!(pascal("mpaa_rating"), "MpaaRating");
        assert_eq!(pascal("2fa"), "V2fa");
        assert_eq!(field("title"), ("title".into(), None));
        assert_eq!(field("type"), ("r#type".into(), None));
        assert_eq!(
            field("LastName"),
            ("last_name".into(), Some("LastName".into()))
        );
        assert_eq!(
            field("first name"),
            ("first_name".into(), Some("first name".into()))
        );
        assert_eq!(default_label("Pg13"), "pg13");
    }
}
