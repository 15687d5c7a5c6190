use super::*;

#[test]
fn each_command_has_one_entry_named_for_it() {
    for c in COMMANDS {
        let spelled: String = c
            .name
            .split('-')
            .map(|w| w[..1].to_uppercase() + &w[1..])
            .collect();
        assert_eq!(format!("{:?}", c.command), spelled, "{}", c.name);
        let n = COMMANDS.iter().filter(|d| d.command == c.command).count();
        assert_eq!(n, 1, "{:?} is in the table {n} times", c.command);
    }
}

#[test]
fn every_page_is_wrapped_and_has_an_exit_status() {
    for c in COMMANDS {
        for line in command(c).lines().skip(1) {
            assert!(line.chars().count() <= 76, "{}: long line {line:?}", c.name);
        }
        if c.name != "help" {
            assert!(c.body.contains("Exit status"), "{}", c.name);
        }
    }
    for line in overview().lines() {
        assert!(line.chars().count() <= 80, "long line {line:?}");
    }
}
