//! Man pages from the CLI definitions (`clap_mangen`), for `dpgw man` and
//! `dpgwctl man`: one page for the program and one per visible subcommand.

use std::path::Path;

/// Writes `name.section` and `name-SUB.section` for each visible subcommand
/// into `dir` (created if missing).
pub fn write(
    dir: &Path,
    cmd: clap::Command,
    name: &'static str,
    section: &'static str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = cmd.name(name);
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section(section)
        .render(&mut buf)?;
    std::fs::write(dir.join(format!("{name}.{section}")), &buf)?;
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        // clap names are &'static: a page name lives as long as this run.
        let sub_name: &'static str =
            Box::leak(format!("{name}-{}", sub.get_name()).into_boxed_str());
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub.clone().name(sub_name).bin_name(sub_name))
            .section(section)
            .render(&mut buf)?;
        std::fs::write(dir.join(format!("{sub_name}.{section}")), &buf)?;
    }
    Ok(())
}
