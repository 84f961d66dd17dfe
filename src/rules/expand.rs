//! `$VAR` / `${VAR}` substitution inside one argv element of a rule's `run`. Templates are
//! parsed at load time so a malformed `${` is a config error and an event costs only the
//! copying. Expansion never splits, globs or quotes: each template yields exactly one
//! argument, whatever bytes the event carried, and nothing goes through a shell.
//!
//! `$$` is a literal `$`; a `$` not followed by a name start (`[A-Za-z_]`) or `{` is
//! literal; an unset variable expands to nothing.

/// Why a `run` element does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("unclosed `${{`")]
    Unclosed,
    #[error("invalid variable name {0:?} in `${{...}}` (names are [A-Za-z_][A-Za-z0-9_]*)")]
    BadName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(Box<[u8]>),
    Var(Box<[u8]>),
}

/// One argv element with its variable references resolved to positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Box<[Part]>,
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Template {
    pub fn parse(s: &[u8]) -> Result<Template, ExpandError> {
        let mut parts = Vec::new();
        let mut lit = Vec::new();
        let mut i = 0;
        while i < s.len() {
            if s[i] != b'$' {
                lit.push(s[i]);
                i += 1;
                continue;
            }
            let name = match s.get(i + 1) {
                Some(b'$') => {
                    lit.push(b'$');
                    i += 2;
                    continue;
                }
                Some(b'{') => {
                    let body = &s[i + 2..];
                    let end = body
                        .iter()
                        .position(|&b| b == b'}')
                        .ok_or(ExpandError::Unclosed)?;
                    let name = &body[..end];
                    let valid = name.first().is_some_and(|&b| is_name_start(b))
                        && name.iter().all(|&b| is_name_char(b));
                    if !valid {
                        return Err(ExpandError::BadName(
                            String::from_utf8_lossy(name).into_owned(),
                        ));
                    }
                    i += 2 + end + 1;
                    name
                }
                Some(&b) if is_name_start(b) => {
                    let len = s[i + 1..].iter().take_while(|&&b| is_name_char(b)).count();
                    let name = &s[i + 1..i + 1 + len];
                    i += 1 + len;
                    name
                }
                _ => {
                    lit.push(b'$');
                    i += 1;
                    continue;
                }
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit).into()));
            }
            parts.push(Part::Var(name.into()));
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.into()));
        }
        Ok(Template {
            parts: parts.into(),
        })
    }

    /// The element for one event; `lookup` gives a variable's value or `None` if unset.
    pub fn expand<'a>(&self, lookup: impl Fn(&[u8]) -> Option<&'a [u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        for part in self.parts.iter() {
            match part {
                Part::Lit(l) => out.extend_from_slice(l),
                Part::Var(name) => out.extend_from_slice(lookup(name).unwrap_or_default()),
            }
        }
        out
    }

    /// As [`Template::expand`], but `None` if a variable it names is unset or empty: a
    /// link such as `disk/by-id/$ID_SERIAL` is not made at `disk/by-id/`.
    pub fn expand_all_set<'a>(
        &self,
        lookup: impl Fn(&[u8]) -> Option<&'a [u8]>,
    ) -> Option<Vec<u8>> {
        let all_set = self.parts.iter().all(|p| match p {
            Part::Lit(_) => true,
            Part::Var(name) => lookup(name).is_some_and(|v| !v.is_empty()),
        });
        all_set.then(|| self.expand(lookup))
    }

    /// Whether the element expands to the same bytes for every event.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// Whether the element always expands to nothing.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(t: &str, vars: &[(&str, &str)]) -> String {
        let t = Template::parse(t.as_bytes()).unwrap();
        let out = t.expand(|k| {
            vars.iter()
                .find(|(n, _)| n.as_bytes() == k)
                .map(|(_, v)| v.as_bytes())
        });
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn substitutes() {
        let vars = [("A", "1"), ("MODALIAS", "usb:v1"), ("A_B", "2")];
        assert_eq!(expand("$MODALIAS", &vars), "usb:v1");
        assert_eq!(expand("${A}B", &vars), "1B");
        assert_eq!(expand("$AB", &vars), "", "$AB is the variable AB");
        assert_eq!(expand("$A_B-$A", &vars), "2-1");
        assert_eq!(expand("x${A}y${A_B}z", &vars), "x1y2z");
        assert_eq!(expand("plain", &vars), "plain");
        assert_eq!(expand("", &vars), "");
    }

    #[test]
    fn unset_is_empty() {
        assert_eq!(expand("<$NOPE>", &[]), "<>");
        assert_eq!(expand("<${NOPE}>", &[]), "<>");
    }

    #[test]
    fn dollars() {
        assert_eq!(expand("$$", &[("A", "1")]), "$");
        assert_eq!(expand("$$A", &[("A", "1")]), "$A");
        assert_eq!(expand("$", &[]), "$");
        assert_eq!(expand("a$", &[]), "a$");
        assert_eq!(expand("$1", &[]), "$1");
        assert_eq!(expand("$-x", &[]), "$-x");
        assert_eq!(expand("cost: 5$ ", &[]), "cost: 5$ ");
    }

    #[test]
    fn values_stay_inert() {
        let evil = "x; rm -rf / $(reboot) `id` ${HOME} *";
        assert_eq!(expand("$V", &[("V", evil)]), evil);
        assert_eq!(
            expand("--dev=${V}", &[("V", evil)]),
            format!("--dev={evil}")
        );
    }

    #[test]
    fn errors() {
        assert_eq!(Template::parse(b"${A"), Err(ExpandError::Unclosed));
        assert_eq!(Template::parse(b"x${"), Err(ExpandError::Unclosed));
        assert_eq!(
            Template::parse(b"${}"),
            Err(ExpandError::BadName(String::new()))
        );
        assert_eq!(
            Template::parse(b"${1A}"),
            Err(ExpandError::BadName("1A".into()))
        );
        assert_eq!(
            Template::parse(b"${A-B}"),
            Err(ExpandError::BadName("A-B".into()))
        );
        assert_eq!(ExpandError::Unclosed.to_string(), "unclosed `${`");
    }

    #[test]
    fn all_set() {
        let t = Template::parse(b"disk/by-id/$A-$B").unwrap();
        let get = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &[u8]| {
                vars.iter()
                    .find(|(n, _)| n.as_bytes() == k)
                    .map(|(_, v)| v.as_bytes())
            }
        };
        assert_eq!(
            t.expand_all_set(get(&[("A", "a"), ("B", "b")])),
            Some(b"disk/by-id/a-b".to_vec())
        );
        assert_eq!(t.expand_all_set(get(&[("A", "a"), ("B", "")])), None);
        assert_eq!(t.expand_all_set(get(&[("A", "a")])), None);
    }

    #[test]
    fn literal_and_empty() {
        assert!(Template::parse(b"/sbin/modprobe").unwrap().is_literal());
        assert!(Template::parse(b"$$").unwrap().is_literal());
        assert!(!Template::parse(b"$A").unwrap().is_literal());
        assert!(Template::parse(b"").unwrap().is_empty());
        assert!(!Template::parse(b"$A").unwrap().is_empty());
    }
}
