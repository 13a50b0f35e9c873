//! Tables of names for what a user picks by name (the precisions, the application's backends):
//! each a `[(value, name)]` table, read both ways here, and listed for messages.

/// `value`'s name in `table`.
///
/// # Panics
/// If `table` does not name it: every table names every value of its type (each type's tests
/// hold it).
pub fn name_of<T: PartialEq>(table: &[(T, &'static str)], value: &T) -> &'static str {
    table
        .iter()
        .find(|(v, _)| v == value)
        .map(|(_, name)| *name)
        .expect("the table names every value")
}

/// The value `table` names `name`, if any.
pub fn value_of<T: Copy>(table: &[(T, &str)], name: &str) -> Option<T> {
    table.iter().find(|(_, n)| *n == name).map(|(v, _)| *v)
}

/// The names for messages: `f32, bf16 or int8`.
pub fn listed<T>(table: &[(T, &str)]) -> String {
    let names: Vec<&str> = table.iter().map(|(_, n)| *n).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_both_ways() {
        let table = [(1, "one"), (2, "two"), (3, "three")];
        assert_eq!(name_of(&table, &2), "two");
        assert_eq!(value_of(&table, "three"), Some(3));
        assert_eq!(value_of(&table, "four"), None);
        assert_eq!(listed(&table), "one, two or three");
        assert_eq!(listed(&table[..1]), "one");
    }
}
