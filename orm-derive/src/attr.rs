//! The `#[orm(...)]` grammar: strict, every unknown key is an error that shows the right form.

use syn::spanned::Spanned as _;
use syn::{Attribute, Error, Expr, Lit, LitStr, Path, Result};

/// One `key` or `key = value` inside `#[orm(...)]`.
pub(crate) struct Entry {
    pub(crate) key: syn::Ident,
    pub(crate) value: Option<Expr>,
    /// `key(a = 1, b = 2)`: the entries inside the parentheses.
    pub(crate) list: Vec<Entry>,
}

/// Parses every `#[orm(...)]` attribute, checking keys against `allowed` (key, example).
pub(crate) fn entries(
    attrs: &[Attribute],
    allowed: &[(&str, &str)],
    place: &str,
) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("orm")) {
        attr.parse_nested_meta(|meta| {
            let key = meta.path.get_ident().cloned().ok_or_else(|| meta.error("expected a key"))?;
            let name = key.to_string();
            let Some((_, example)) = allowed.iter().find(|(k, _)| *k == name) else {
                let list: Vec<&str> = allowed.iter().map(|(k, _)| *k).collect();
                let hint = closest(&name, &list)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                return Err(Error::new(
                    key.span(),
                    format!(
                        "unknown key `{name}` in #[orm(...)] on {place}{hint}; expected one of: {}; the correct format looks like #[orm({})]",
                        list.join(", "),
                        allowed.first().map(|(_, e)| *e).unwrap_or_default()
                    ),
                ));
            };
            let repeatable = example.starts_with(&format!("{name}("));
            if !repeatable && out.iter().any(|e| e.key == name) {
                return Err(Error::new(key.span(), format!("`{name}` is given twice")));
            }
            if meta.input.peek(syn::token::Paren) {
                if !repeatable {
                    return Err(Error::new(key.span(), format!("`{name}` takes no list; the correct format looks like #[orm({example})]")));
                }
                let mut list = Vec::new();
                meta.parse_nested_meta(|inner| {
                    let k = inner.path.get_ident().cloned().ok_or_else(|| inner.error("expected a key"))?;
                    let v = inner.value()?.parse::<Expr>()?;
                    list.push(Entry { key: k, value: Some(v), list: Vec::new() });
                    Ok(())
                })?;
                out.push(Entry { key, value: None, list });
                return Ok(());
            }
            if repeatable {
                return Err(Error::new(key.span(), format!("`{name}` needs its parts in parentheses; the correct format looks like #[orm({example})]")));
            }
            let value = if meta.input.peek(syn::Token![=]) {
                Some(meta.value()?.parse::<Expr>()?)
            } else {
                None
            };
            let takes_value = example.contains('=');
            let optional_value = name == "default" || name == "generated";
            if value.is_none() && takes_value && !optional_value {
                return Err(Error::new(key.span(), format!("`{name}` needs a value; the correct format looks like #[orm({example})]")));
            }
            if value.is_some() && !takes_value && !optional_value {
                return Err(Error::new(key.span(), format!("`{name}` takes no value; the correct format looks like #[orm({example})]")));
            }
            out.push(Entry {
                key,
                value,
                list: Vec::new(),
            });
            Ok(())
        })?;
    }
    Ok(out)
}

fn closest<'a>(name: &str, options: &[&'a str]) -> Option<&'a str> {
    options
        .iter()
        .copied()
        .filter(|o| edit_distance(name, o) <= 2)
        .min_by_key(|o| edit_distance(name, o))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Entry {
    /// The entry named `key` inside this entry's list.
    pub(crate) fn part(&self, key: &str) -> Option<&Entry> {
        self.list.iter().find(|e| e.key == key)
    }

    /// The required part `key` of a list entry.
    pub(crate) fn required(&self, key: &str, example: &str) -> Result<&Entry> {
        self.part(key).ok_or_else(|| {
            Error::new(
                self.key.span(),
                format!(
                    "`{}` needs `{key}`; the correct format looks like #[orm({example})]",
                    self.key
                ),
            )
        })
    }

    pub(crate) fn string(&self, example: &str) -> Result<LitStr> {
        match &self.value {
            Some(Expr::Lit(l)) => match &l.lit {
                Lit::Str(s) => Ok(s.clone()),
                other => Err(Error::new(
                    other.span(),
                    format!("expected a string; the correct format looks like #[orm({example})]"),
                )),
            },
            Some(other) => Err(Error::new(
                other.span(),
                format!("expected a string; the correct format looks like #[orm({example})]"),
            )),
            None => Err(Error::new(
                self.key.span(),
                format!("expected a value; the correct format looks like #[orm({example})]"),
            )),
        }
    }

    pub(crate) fn bool(&self, example: &str) -> Result<bool> {
        match &self.value {
            Some(Expr::Lit(l)) => match &l.lit {
                Lit::Bool(b) => Ok(b.value),
                other => Err(Error::new(
                    other.span(),
                    format!(
                        "expected true or false; the correct format looks like #[orm({example})]"
                    ),
                )),
            },
            _ => Err(Error::new(
                self.key.span(),
                format!("expected true or false; the correct format looks like #[orm({example})]"),
            )),
        }
    }

    pub(crate) fn int(&self, example: &str) -> Result<u32> {
        match &self.value {
            Some(Expr::Lit(l)) => match &l.lit {
                Lit::Int(i) => i.base10_parse(),
                other => Err(Error::new(
                    other.span(),
                    format!("expected a number; the correct format looks like #[orm({example})]"),
                )),
            },
            _ => Err(Error::new(
                self.key.span(),
                format!("expected a number; the correct format looks like #[orm({example})]"),
            )),
        }
    }

    pub(crate) fn path(&self, example: &str) -> Result<Path> {
        match &self.value {
            Some(Expr::Path(p)) => Ok(p.path.clone()),
            Some(other) => Err(Error::new(
                other.span(),
                format!("expected a model type; the correct format looks like #[orm({example})]"),
            )),
            None => Err(Error::new(
                self.key.span(),
                format!("expected a model type; the correct format looks like #[orm({example})]"),
            )),
        }
    }
}

/// `UserAccount` → `user_account`.
pub(crate) fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
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
