//! `cpr-vm inspect FILE`: what a checkpoint holds, checked as the loaders check it, without
//! KVM or a VM. What an operator runs on a checkpoint before a host reboot.
//!
//! * `--check`: the whole-file validation `cpr-load` and `migrate-incoming` run before they
//!   change anything (framing, versions, every section known and present, the saver's value
//!   rules, vmdesc, checksum; the `ram` section read twice), against the checkpoint's own
//!   machine shape ([`cpr::checkpoint::inspect`]). A damaged file exits 1 with the loader's
//!   error.
//! * default: a summary (stream kind, machine shape, run state, epoch, RAM pages carried,
//!   sections with their versions and sizes); `--json` prints it as JSON.
//! * `--extract-ram DIR`: each RAM block a copied stream carries, as `DIR/<idstr>` of the
//!   block's exact size (sparse: zero pages are holes), written only once the whole stream
//!   has checked out. Existing files are never overwritten, and a failed extraction removes
//!   what it created.
//!
//! `FILE` is a path or `file:PATH[,offset=N]`, as for `--incoming`. The file is opened once;
//! each pass reads its own descriptor of that open file, so a file renamed over the path
//! meanwhile cannot mix two checkpoints.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Value, json};

use cpr::checkpoint::{self, CheckpointKind, Inspection};
use cpr::config::Incoming;
use cpr_savevm::{BoxError, RamBlockDesc, RamBlocks};

use crate::error::AppError;

/// Options of `cpr-vm inspect`.
#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// The checkpoint: a path or `file:PATH[,offset=N]`.
    #[arg(value_name = "FILE")]
    pub file: String,
    /// Only check the file as the loaders do; print the loader's error and exit 1 if it is
    /// damaged.
    #[arg(long, conflicts_with = "json")]
    pub check: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write each RAM block the stream carries to `DIR/<idstr>` (mainline streams with RAM
    /// copied in).
    #[arg(long, value_name = "DIR")]
    pub extract_ram: Option<PathBuf>,
}

/// Runs `cpr-vm inspect`.
pub fn run(args: &InspectArgs) -> Result<(), AppError> {
    let (path, offset) = match args.file.parse::<Incoming>() {
        Ok(Incoming::File { path, offset }) => (path, offset),
        Ok(Incoming::Defer | Incoming::Unix { .. }) | Err(_) => {
            return Err(AppError::InspectUsage(format!(
                "'{}' is not a file (a path or file:PATH[,offset=N])",
                args.file
            )));
        }
    };
    let file = File::open(&path).map_err(|source| AppError::InspectOpen {
        path: path.clone(),
        source,
    })?;
    let source = checkpoint::StreamSource::new(&file, &path, offset, "inspect");
    let open = || source.open();
    let failed = |source| AppError::Inspect {
        path: path.clone(),
        source: Box::new(source),
    };
    let inspection = match &args.extract_ram {
        None => checkpoint::inspect(open, None).map_err(failed)?,
        Some(dir) => {
            let layout = checkpoint::stream_ram_blocks(open).map_err(failed)?;
            if !layout.blocks.iter().any(|b| !b.ignored) {
                return Err(AppError::NothingToExtract { path });
            }
            let mut out = Extract::create(dir, layout.blocks)?;
            out.ignore_shared = layout.ignore_shared;
            match checkpoint::inspect(open, Some(&mut out)) {
                Ok(i) => i,
                Err(e) => {
                    out.remove();
                    return Err(failed(e));
                }
            }
        }
    };
    let size = file.metadata().map_or(0, |m| m.len());
    let mut text = if args.check {
        format!("{}: ok ({})\n", path.display(), kind_text(inspection.kind))
    } else if args.json {
        let doc = to_json(&path, offset, size, &inspection);
        serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
    } else {
        summary(&path, offset, size, &inspection)
    };
    if let Some(dir) = &args.extract_ram
        && !args.json
    {
        for b in inspection.ram.iter().flat_map(|r| &r.blocks) {
            if !b.ignored {
                text.push_str(&format!("extracted {}\n", dir.join(&b.idstr).display()));
            }
        }
    }
    // Not println!: a closed pipe is an error to report, not a panic.
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(AppError::Output)
}

fn kind_text(kind: CheckpointKind) -> &'static str {
    match kind {
        CheckpointKind::CprSave => "cpr-save: device state, RAM left in place",
        CheckpointKind::MainlineInPlace => "mainline migrate: RAM left in place",
        CheckpointKind::MainlineCopied => "mainline migrate: RAM copied into the stream",
    }
}

/// The human-readable summary.
fn summary(path: &Path, offset: u64, size: u64, i: &Inspection) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let l = &i.layout;
    let _ = writeln!(
        s,
        "file:      {} (stream at offset {offset}, file {size} bytes)",
        path.display()
    );
    let _ = writeln!(s, "stream:    {} ({})", i.kind.name(), kind_text(i.kind));
    let _ = writeln!(s, "run state: {}", i.runstate);
    let epoch = if l.epoch.is_empty() { "none" } else { &l.epoch };
    let _ = writeln!(s, "epoch:     {epoch}");
    let _ = writeln!(s, "vCPUs:     {}", l.vcpus);
    let _ = writeln!(s, "RAM blocks:");
    for b in &l.ram {
        let _ = writeln!(
            s,
            "  {:<12} {:>14} bytes  {}  {}  {}",
            b.idstr,
            b.size,
            if b.shared { "shared " } else { "private" },
            if b.copied { "copied  " } else { "in place" },
            b.backing
        );
    }
    match &i.ram {
        Some(r) => {
            let _ = writeln!(
                s,
                "RAM pages: {} normal, {} zero (ram section id {}, version {}, {} bytes at offset {})",
                r.pages, r.zero_pages, r.section_id, r.version_id, r.size, r.offset
            );
        }
        None => {
            let _ = writeln!(s, "RAM pages: none (no ram section)");
        }
    }
    let _ = writeln!(s, "sections:");
    let _ = writeln!(
        s,
        "  {:>4}  {:<14} {:>8} {:>7} {:>10} {:>8}",
        "id", "idstr", "instance", "version", "offset", "bytes"
    );
    if let Some(r) = &i.ram {
        let _ = writeln!(
            s,
            "  {:>4}  {:<14} {:>8} {:>7} {:>10} {:>8}",
            r.section_id, "ram", 0, r.version_id, r.offset, r.size
        );
    }
    for x in &i.sections {
        let _ = writeln!(
            s,
            "  {:>4}  {:<14} {:>8} {:>7} {:>10} {:>8}",
            x.section_id, x.idstr, x.instance_id, x.version_id, x.offset, x.size
        );
    }
    s
}

/// The summary as JSON.
fn to_json(path: &Path, offset: u64, size: u64, i: &Inspection) -> Value {
    let l = &i.layout;
    let ram = i.ram.as_ref().map(|r| {
        json!({
            "section_id": r.section_id,
            "version_id": r.version_id,
            "offset": r.offset,
            "size": r.size,
            "pages": r.pages,
            "zero_pages": r.zero_pages,
            "blocks": r.blocks.iter().map(|b| json!({
                "idstr": b.idstr, "used_length": b.used_length, "ignored": b.ignored,
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "file": path.display().to_string(),
        "offset": offset,
        "file_size": size,
        "kind": i.kind.name(),
        "runstate": i.runstate.as_str(),
        "epoch": (!l.epoch.is_empty()).then_some(l.epoch.as_str()),
        "vcpus": l.vcpus,
        "ram_blocks": l.ram.iter().map(|b| json!({
            "idstr": b.idstr, "size": b.size, "shared": b.shared,
            "backing": b.backing, "copied": b.copied,
        })).collect::<Vec<_>>(),
        "ram": ram,
        "sections": i.sections.iter().map(|s| json!({
            "idstr": s.idstr, "instance_id": s.instance_id, "section_id": s.section_id,
            "version_id": s.version_id, "offset": s.offset, "size": s.size,
        })).collect::<Vec<_>>(),
    })
}

/// Whether `idstr` can name a file in the extraction directory, as it is: not empty, not
/// `.` or `..`, no `/` and no NUL.
fn safe_file_name(idstr: &str) -> bool {
    !idstr.is_empty() && idstr != "." && idstr != ".." && !idstr.contains(['/', '\0'])
}

/// The extraction target: one sparse file per copied block, written at the block's offsets.
struct Extract {
    blocks: Vec<RamBlockDesc>,
    /// Whether the stream announces `x-ignore-shared`.
    ignore_shared: bool,
    /// Per block: the file and its path (`None` for a block kept in place).
    files: Vec<Option<(File, PathBuf)>>,
}

impl Extract {
    /// Creates `dir` if needed, and a new file of the block's length for each copied block.
    fn create(dir: &Path, blocks: Vec<RamBlockDesc>) -> Result<Extract, AppError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AppError::Extract { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut out = Extract {
            ignore_shared: false,
            blocks: Vec::new(),
            files: Vec::new(),
        };
        for b in &blocks {
            if b.ignored {
                out.files.push(None);
                continue;
            }
            if !safe_file_name(&b.idstr) {
                out.remove();
                return Err(AppError::ExtractName {
                    idstr: b.idstr.clone(),
                });
            }
            let path = dir.join(&b.idstr);
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|f| f.set_len(b.used_length).map(|()| f));
            match created {
                Ok(f) => out.files.push(Some((f, path))),
                Err(e) => {
                    // A file we did not create (it existed) is not ours to remove.
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        let _ = std::fs::remove_file(&path);
                    }
                    out.remove();
                    return Err(io(&path)(e));
                }
            }
        }
        out.blocks = blocks;
        Ok(out)
    }

    /// Removes every file this extraction created.
    fn remove(&mut self) {
        for (_, path) in self.files.drain(..).flatten() {
            let _ = std::fs::remove_file(path);
        }
    }

    fn file(&self, block: usize) -> Result<&File, BoxError> {
        match self.files.get(block) {
            Some(Some((f, _))) => Ok(f),
            _ => Err(format!("no extraction file for RAM block {block}").into()),
        }
    }
}

impl RamBlocks for Extract {
    fn blocks(&self) -> Vec<RamBlockDesc> {
        self.blocks.clone()
    }
    fn ignore_shared(&self) -> bool {
        self.ignore_shared
    }
    fn read(&self, _: usize, _: u64, _: &mut [u8]) -> Result<(), BoxError> {
        Err("extraction only writes".into())
    }
    fn write(&mut self, block: usize, offset: u64, data: &[u8]) -> Result<(), BoxError> {
        Ok(self.file(block)?.write_all_at(data, offset)?)
    }
    /// Nothing: the file was created sparse, its holes read as zeros.
    fn zero(&mut self, block: usize, _: u64, _: u64) -> Result<(), BoxError> {
        self.file(block).map(drop)
    }
    fn populated(&self, _: usize) -> Result<Option<Vec<std::ops::Range<u64>>>, BoxError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idstrs_that_are_not_plain_file_names_are_refused() {
        for ok in [
            "pc.ram",
            "vga.vram",
            "0000:00:02.0/..x".replace('/', "_").as_str(),
        ] {
            assert!(safe_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\0b"] {
            assert!(!safe_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn extraction_never_overwrites_and_cleans_up_after_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("b"), b"keep").expect("existing");
        let blocks = vec![
            RamBlockDesc::copied("a", 8192),
            RamBlockDesc::copied("b", 4096),
        ];
        let err = Extract::create(dir.path(), blocks).err().expect("b exists");
        assert!(matches!(err, AppError::Extract { .. }), "{err:?}");
        assert!(!dir.path().join("a").exists(), "a was left behind");
        assert_eq!(std::fs::read(dir.path().join("b")).expect("b"), b"keep");

        let blocks = vec![
            RamBlockDesc::copied("a", 8192),
            RamBlockDesc::ignored("shared", 4096),
        ];
        let mut out = Extract::create(dir.path(), blocks).expect("created");
        out.write(0, 4096, &[7; 4096]).expect("write");
        out.zero(0, 0, 4096).expect("zero");
        assert!(
            out.zero(1, 0, 4096).is_err(),
            "an in-place block has no file"
        );
        let a = std::fs::read(dir.path().join("a")).expect("a");
        assert_eq!(a.len(), 8192);
        assert!(a[..4096].iter().all(|&b| b == 0) && a[4096..].iter().all(|&b| b == 7));
        assert!(!dir.path().join("shared").exists());
    }
}
