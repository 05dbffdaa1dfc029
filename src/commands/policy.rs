use crate::error::Result;
use std::path::Path;

pub fn validate(arg: &str, dir: Option<&Path>) -> Result<()> {
    let path = crate::policy::resolve(arg, dir);
    let policy = crate::policy::load(&path)?;
    println!("OK: {} (policy {})", path.display(), policy.name);
    Ok(())
}
