//! The CLI reference (docs/cli.md) generated from the clap definitions, so it cannot drift
//! from `tandem --help`: a test compares the file with what this module renders.

use clap::Command;

/// Width help text is wrapped at in the reference.
const WIDTH: usize = 100;

/// Renders the reference of `root` and every subcommand below it, depth first, as Markdown.
pub fn markdown(root: Command) -> String {
    let root = prepare(root);
    let mut out = String::from(
        "# CLI reference\n\n\
         Generated from the `tandem` command's own definitions (`tandem COMMAND --help` prints\n\
         the same text). Regenerate with `TANDEM_WRITE_CLI_DOC=1 cargo test -p tandem cli_reference`.\n\
         Exit codes: 0 ok, 1 failed operation, 2 bad usage or bad input.\n",
    );
    walk(&root, "", &mut out);
    out
}

/// Fixed width and no environment values, so the text is the same on every machine.
fn prepare(cmd: Command) -> Command {
    let cmd = cmd
        .term_width(WIDTH)
        .max_term_width(WIDTH)
        .mut_args(|a| a.hide_env_values(true));
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    names
        .into_iter()
        .fold(cmd, |c, n| c.mut_subcommand(n, prepare))
}

fn walk(cmd: &Command, prefix: &str, out: &mut String) {
    let path = if prefix.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{prefix} {}", cmd.get_name())
    };
    let mut c = cmd.clone().bin_name(&path);
    let help = c.render_long_help().to_string();
    out.push_str(&format!(
        "\n## `{path}`\n\n```text\n{}\n```\n",
        help.trim_end()
    ));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        walk(sub, &path, out);
    }
}
