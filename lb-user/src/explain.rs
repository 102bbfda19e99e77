//! STUB (being written).
pub fn run(_config: &std::path::Path, _client: &str, _vip: &str, _protocol: &str) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
