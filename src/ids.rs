//! IDs and names shared by sandboxes and containers: 64-hex IDs that may be
//! given by unique prefix, and name reservations that make duplicates fail.

use std::collections::HashMap;

pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(String),
    NotFound,
    Ambiguous(usize),
}

/// Resolves an exact ID or a unique prefix of one.
pub fn resolve<'a>(prefix: &str, ids: impl Iterator<Item = &'a String>) -> Lookup {
    if prefix.is_empty() {
        return Lookup::NotFound;
    }
    let hits: Vec<&String> = ids.filter(|id| id.starts_with(prefix)).collect();
    match hits.as_slice() {
        [] => Lookup::NotFound,
        [one] => Lookup::Found((*one).clone()),
        many => match many.iter().find(|id| id.as_str() == prefix) {
            Some(exact) => Lookup::Found((*exact).clone()),
            None => Lookup::Ambiguous(many.len()),
        },
    }
}

/// Name → ID reservations.
#[derive(Debug, Default)]
pub struct Names(HashMap<String, String>);

impl Names {
    /// Reserves `name` for `id`, or returns the ID that holds it.
    pub fn reserve(&mut self, name: &str, id: &str) -> Result<(), String> {
        match self.0.get(name) {
            Some(holder) if holder != id => Err(holder.clone()),
            _ => {
                self.0.insert(name.to_string(), id.to_string());
                Ok(())
            }
        }
    }

    pub fn release(&mut self, name: &str, id: &str) {
        if self.0.get(name).is_some_and(|h| h == id) {
            self.0.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let ids = ["abc1".to_string(), "abc2".to_string(), "ff".to_string()];
        assert_eq!(resolve("ff", ids.iter()), Lookup::Found("ff".into()));
        assert_eq!(resolve("abc1", ids.iter()), Lookup::Found("abc1".into()));
        assert_eq!(resolve("abc", ids.iter()), Lookup::Ambiguous(2));
        assert_eq!(resolve("zz", ids.iter()), Lookup::NotFound);
        assert_eq!(resolve("", ids.iter()), Lookup::NotFound);
        assert_eq!(new_id().len(), 64);
    }

    #[test]
    fn names() {
        let mut n = Names::default();
        n.reserve("a", "1").unwrap();
        n.reserve("a", "1").unwrap();
        assert_eq!(n.reserve("a", "2"), Err("1".to_string()));
        n.release("a", "2");
        assert!(n.reserve("a", "2").is_err());
        n.release("a", "1");
        n.reserve("a", "2").unwrap();
    }
}
