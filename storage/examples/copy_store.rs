//! Copies a store through a backup (export, then restore into a new directory), which leaves
//! out the garbage sled's log holds: what a freshly written store of the same records needs.
//!
//! Usage: `copy_store FROM TO`. Prints `key=value` lines.

use std::io::{BufReader, BufWriter, Write};

use chatrelay_storage::KvStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(from), Some(to)) = (args.first(), args.get(1)) else {
        return Err("usage: copy_store FROM TO".into());
    };
    let to = std::path::Path::new(to);
    let file = to.with_extension("backup");
    {
        let store = KvStore::open(std::path::Path::new(from), 64 * 1024 * 1024)?;
        let mut out = BufWriter::new(std::fs::File::create(&file)?);
        let summary = store.export_backup(&mut out, 0)?;
        out.flush()?;
        println!("records={} bytes={}", summary.records, summary.bytes);
    }
    let mut input = BufReader::new(std::fs::File::open(&file)?);
    KvStore::restore_backup(&mut input, to, 64 * 1024 * 1024)?;
    println!("backup_file_bytes={}", std::fs::metadata(&file)?.len());
    std::fs::remove_file(&file)?;
    Ok(())
}
