//! Constants for the gRPC path of every RPC of authd's own services, so the
//! server's per-method policy is keyed by generated names, never by strings
//! spelled by hand, and a test can tell when an RPC has no policy.

use std::fmt::Write as _;

use prost_reflect::DescriptorPool;

/// `SCREAMING_SNAKE_CASE` of a CamelCase name.
fn constant_name(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `snake_case` of a CamelCase name.
fn module_name(camel: &str) -> String {
    constant_name(camel).to_ascii_lowercase()
}

/// One module per service of package `package`, each with a constant per
/// method path and `ALL` listing them.
pub fn generate(pool: &DescriptorPool, package: &str) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    for service in pool.services().filter(|s| s.package_name() == package) {
        writeln!(out, "/// Paths of the RPCs of `{}`.", service.full_name())?;
        writeln!(out, "pub mod {} {{", module_name(service.name()))?;
        let mut all = Vec::new();
        for method in service.methods() {
            let constant = constant_name(method.name());
            writeln!(
                out,
                "    pub const {constant}: &str = \"/{}/{}\";",
                service.full_name(),
                method.name()
            )?;
            all.push(constant);
        }
        writeln!(out, "    /// Every method of the service, in proto order.")?;
        writeln!(out, "    pub const ALL: &[&str] = &[{}];", all.join(", "))?;
        writeln!(out, "}}")?;
    }
    Ok(out)
}
