//! The `vmlease` manual: the overview (`vmlease --help`) and one page per
//! command (`vmlease help COMMAND`, `vmlease COMMAND --help`). docs/cli.md
//! carries the same text plus the JSON schemas; a test keeps them in step.
#![forbid(unsafe_code)]

mod commands;

pub use commands::COMMANDS;

/// The commands `vmlease` runs, one variant each; [`COMMANDS`] gives each
/// its name and manual, and `cli::run` dispatches on it (the compiler
/// checks that every command is dispatched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Status,
    Hosts,
    Leases,
    CanEvacuate,
    CheckConfig,
    Init,
    Release,
    ClearFence,
    StorageFence,
    Dump,
    Ha,
    Events,
    Maintenance,
    Hook,
    Completion,
    Help,
}

/// One command: how it is called and what it does.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandHelp {
    pub command: Command,
    pub name: &'static str,
    /// The arguments after the command name.
    pub synopsis: &'static str,
    /// One line for the overview.
    pub summary: &'static str,
    /// The full description, wrapped at 76 columns.
    pub body: &'static str,
    /// Options that take a value.
    pub flags: &'static [&'static str],
    /// How many positional arguments (min, max).
    pub positional: (usize, usize),
}

pub fn find(name: &str) -> Option<&'static CommandHelp> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// `vmlease --help`.
pub fn overview() -> String {
    let mut s = String::from(
        "vmlease: split-brain protection for libvirt/KVM hosts on shared storage

usage: vmlease [--config FILE] [--json] COMMAND [ARGS]
       vmlease help COMMAND    (or 'vmlease help all': the whole manual)

Commands:
",
    );
    for c in COMMANDS {
        let head = format!("{} {}", c.name, c.synopsis);
        let head = head.trim_end();
        let lines = wrap(c.summary, 80 - 25);
        if head.len() > 21 {
            s.push_str(&format!("  {head}\n"));
        }
        for (i, l) in lines.iter().enumerate() {
            let left = if i == 0 && head.len() <= 21 { head } else { "" };
            s.push_str(&format!("  {left:<21}  {l}\n"));
        }
    }
    s.push_str(
        "
Options (before or after the command, except after hook):
  -c, --config FILE      the configuration file (default
                         /etc/libvirt/qemu-vmlease.conf)
  --json                 machine-readable output on stdout (the schemas are
                         in docs/cli.md)
  -h, --help             this text, or with a command its manual
  --version              the version

Exit status: 0 yes / success; 1 no (not safe yet, refused, not protected,
a corrupt record); 2 usage or configuration error; 3 cannot tell (the
lockspace did not answer within its deadline, no watchdog view here).
Each command's manual gives its exact meaning.

Files: /etc/libvirt/qemu-vmlease.conf (configuration), lockspace_dir
(shared: VMLEASE, hosts, leases/), state_dir (local, default /run/vmlease:
the watchdog's status, procs/ registry, fence marker),
/etc/libvirt/hooks/qemu.d/vmlease and /etc/libvirt/hooks/vmlease.env (the
hook and its optional settings).",
    );
    s
}

/// Splits text into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let cur = lines.last_mut().expect("never empty");
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
    }
    lines
}

/// `vmlease help all`: the overview and every command's page (what the
/// vmlease(8) man page holds).
pub fn full() -> String {
    let mut s = overview();
    s.push_str("\n\nCOMMANDS IN DETAIL\n");
    for c in COMMANDS.iter().filter(|c| c.name != "help") {
        s.push_str(&format!("\n{}\n", command(c)));
    }
    s
}

/// `vmlease help COMMAND`.
pub fn command(c: &CommandHelp) -> String {
    let usage = format!(
        "usage: vmlease [--config FILE] [--json] {} {}",
        c.name, c.synopsis
    );
    format!("{}\n\n{}\n\n{}", usage.trim_end(), c.summary, c.body)
}

#[cfg(test)]
mod tests;
