use crate::error::{Error, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn run(out: Option<&Path>) -> Result<()> {
    let (file, public) = crate::seal::generate_identity();
    match out {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    Error::input(format!(
                        "cannot create identity file {}: {e} (backstop never overwrites a key)",
                        path.display()
                    ))
                })?;
            f.write_all(file.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::failed(format!("writing {}: {e}", path.display())))?;
            eprintln!(
                "wrote identity {} (keep it off the backup host); its public key:",
                path.display()
            );
            println!("{public}");
        }
        None => {
            print!("{file}");
            eprintln!("Public key: {public}");
        }
    }
    Ok(())
}
