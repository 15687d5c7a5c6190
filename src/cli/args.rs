//! Command-line parsing, by hand: global options (`--config`, `--json`,
//! `--help`) before or after the command, each command's own options and
//! positional arguments, and nothing else. Everything after `hook` is
//! passed through untouched (a domain may be called `--json`).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use super::help::{self, CommandHelp};
use crate::config;

/// Command options that take no value (listed in a command's `flags`
/// too); `Args::flag` gives "" when one is present.
const SWITCHES: &[&str] = &["--follow", "--wait"];

/// Options every command takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    pub config: PathBuf,
    pub json: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Run `command` with its options and positional arguments.
    Run {
        opts: Opts,
        command: &'static CommandHelp,
        args: Args,
    },
    /// Print this text on stdout and exit 0 (help, version).
    Print(String),
}

/// A command's own options and positional arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    pub flags: Vec<(&'static str, String)>,
    pub positional: Vec<String>,
}

impl Args {
    /// The value of a command option (`--host N`), if given.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A usage error: the message, printed with the command's synopsis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub message: String,
    pub command: Option<&'static str>,
}

impl UsageError {
    fn new(message: impl Into<String>, command: Option<&'static str>) -> UsageError {
        UsageError {
            message: message.into(),
            command,
        }
    }
}

/// Parses `argv` (without the program name).
pub fn parse(argv: &[String]) -> Result<Parsed, UsageError> {
    let mut opts = Opts {
        config: PathBuf::from(config::DEFAULT_PATH),
        json: false,
    };
    let mut command: Option<&'static CommandHelp> = None;
    let mut args = Args::default();
    let mut want_help = false;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let cmd_name = command.map(|c| c.name);
        // `hook` takes libvirt's arguments verbatim.
        if cmd_name == Some("hook") {
            if args.positional.is_empty() && (a == "--help" || a == "-h") {
                want_help = true;
            } else {
                args.positional.push(a.clone());
            }
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        match name {
            "--config" | "-c" => {
                let v = value(name, inline, &mut it, cmd_name)?;
                if v.is_empty() {
                    return Err(UsageError::new("--config needs a file name", cmd_name));
                }
                opts.config = PathBuf::from(v);
            }
            "--json" if inline.is_none() => opts.json = true,
            "--help" | "-h" if inline.is_none() => want_help = true,
            "--version" if inline.is_none() && command.is_none() => {
                return Ok(Parsed::Print(format!(
                    "vmlease {}",
                    env!("CARGO_PKG_VERSION")
                )));
            }
            _ if command.is_none() => {
                if a.starts_with('-') && a != "-" {
                    return Err(UsageError::new(format!("unknown option '{a}'"), None));
                }
                command = Some(
                    help::find(a)
                        .ok_or_else(|| UsageError::new(format!("unknown command '{a}'"), None))?,
                );
            }
            _ => {
                let c = command.expect("checked above");
                if let Some(flag) = c.flags.iter().find(|f| **f == name) {
                    if args.flag(flag).is_some() {
                        return Err(UsageError::new(format!("{flag} given twice"), Some(c.name)));
                    }
                    let v = if SWITCHES.contains(flag) {
                        if inline.is_some() {
                            return Err(UsageError::new(
                                format!("{flag} takes no value"),
                                Some(c.name),
                            ));
                        }
                        String::new()
                    } else {
                        value(flag, inline, &mut it, Some(c.name))?
                    };
                    args.flags.push((flag, v));
                } else if a.starts_with('-') && a != "-" {
                    return Err(UsageError::new(
                        format!("unknown option '{a}' for {}", c.name),
                        Some(c.name),
                    ));
                } else {
                    args.positional.push(a.clone());
                }
            }
        }
    }
    let Some(command) = command else {
        if want_help {
            return Ok(Parsed::Print(help::overview()));
        }
        return Err(UsageError::new("no command given", None));
    };
    if want_help {
        return Ok(Parsed::Print(help::command(command)));
    }
    if command.command == help::Command::Help {
        return match args.positional.as_slice() {
            [] => Ok(Parsed::Print(help::overview())),
            [all] if all == "all" => Ok(Parsed::Print(help::full())),
            [name] => help::find(name)
                .map(|c| Parsed::Print(help::command(c)))
                .ok_or_else(|| UsageError::new(format!("unknown command '{name}'"), None)),
            _ => Err(UsageError::new("help takes one command name", Some("help"))),
        };
    }
    let (min, max) = command.positional;
    let n = args.positional.len();
    if n < min || n > max {
        let what = if n < min {
            format!("{} needs more arguments", command.name)
        } else {
            format!(
                "unexpected argument '{}' for {}",
                args.positional[max], command.name
            )
        };
        return Err(UsageError::new(what, Some(command.name)));
    }
    Ok(Parsed::Run {
        opts,
        command,
        args,
    })
}

fn value<'a>(
    flag: &str,
    inline: Option<String>,
    it: &mut impl Iterator<Item = &'a String>,
    command: Option<&'static str>,
) -> Result<String, UsageError> {
    match inline {
        Some(v) => Ok(v),
        None => it
            .next()
            .cloned()
            .ok_or_else(|| UsageError::new(format!("{flag} needs a value"), command)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Parsed, UsageError> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn run(a: &[&str]) -> (Opts, &'static str, Args) {
        match p(a).unwrap() {
            Parsed::Run {
                opts,
                command,
                args,
            } => (opts, command.name, args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn global_options_before_or_after_the_command() {
        let (o, c, _) = run(&["--json", "-c", "/x.conf", "hosts"]);
        assert_eq!(
            (o.json, o.config, c),
            (true, PathBuf::from("/x.conf"), "hosts")
        );
        let (o, c, _) = run(&["hosts", "--config=/y.conf", "--json"]);
        assert_eq!(
            (o.json, o.config, c),
            (true, PathBuf::from("/y.conf"), "hosts")
        );
        let (o, _, _) = run(&["status"]);
        assert_eq!(o.config, PathBuf::from(config::DEFAULT_PATH));
    }

    #[test]
    fn command_options_and_positionals() {
        let (_, c, a) = run(&["leases", "--host", "3", "--domain=abc"]);
        assert_eq!(c, "leases");
        assert_eq!(
            (a.flag("--host"), a.flag("--domain")),
            (Some("3"), Some("abc"))
        );
        let (_, c, a) = run(&["can-evacuate", "host-1"]);
        assert_eq!(
            (c, a.positional),
            ("can-evacuate", vec!["host-1".to_string()])
        );
        let (_, _, a) = run(&["init", "--max-hosts", "16"]);
        assert_eq!(a.flag("--max-hosts"), Some("16"));
    }

    #[test]
    fn hook_arguments_pass_through() {
        let (o, c, a) = run(&[
            "--config", "/c", "hook", "qemu", "--json", "prepare", "begin", "-",
        ]);
        assert_eq!(c, "hook");
        assert!(!o.json, "a domain called --json is not an option");
        assert_eq!(a.positional, ["qemu", "--json", "prepare", "begin", "-"]);
    }

    #[test]
    fn usage_errors() {
        for (argv, want) in [
            (&["nosuch"][..], "unknown command 'nosuch'"),
            (&["--bogus", "hosts"][..], "unknown option '--bogus'"),
            (
                &["leases", "--hots", "1"][..],
                "unknown option '--hots' for leases",
            ),
            (&["leases", "--host"][..], "--host needs a value"),
            (
                &["leases", "--host", "1", "--host", "2"][..],
                "--host given twice",
            ),
            (
                &["hosts", "extra"][..],
                "unexpected argument 'extra' for hosts",
            ),
            (&["can-evacuate"][..], "can-evacuate needs more arguments"),
            (&[][..], "no command given"),
            (&["--config"][..], "--config needs a value"),
            (&["help", "nosuch"][..], "unknown command 'nosuch'"),
        ] {
            let e = p(argv).unwrap_err();
            assert!(e.message.contains(want), "{argv:?}: {e:?}");
        }
    }

    #[test]
    fn help_and_version() {
        for argv in [&["--help"][..], &["help"][..], &["-h"][..]] {
            match p(argv).unwrap() {
                Parsed::Print(t) => assert!(t.contains("can-evacuate HOST"), "{t}"),
                other => panic!("{other:?}"),
            }
        }
        for argv in [
            &["help", "leases"][..],
            &["leases", "--help"][..],
            &["--help", "leases"][..],
        ] {
            match p(argv).unwrap() {
                Parsed::Print(t) => assert!(t.starts_with("usage: vmlease"), "{t}"),
                other => panic!("{other:?}"),
            }
        }
        match p(&["help", "all"]).unwrap() {
            Parsed::Print(t) => {
                assert!(t.contains("COMMANDS IN DETAIL") && t.contains("The rule, in this order"))
            }
            other => panic!("{other:?}"),
        }
        match p(&["--version"]).unwrap() {
            Parsed::Print(t) => assert!(t.starts_with("vmlease ")),
            other => panic!("{other:?}"),
        }
    }
}
