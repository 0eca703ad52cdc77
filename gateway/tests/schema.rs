//! `gateway/schema.graphql` is the published API: it must match the code.

#[test]
fn the_committed_sdl_matches_the_schema() {
    let sdl = gateway::graphql::sdl();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &sdl).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == sdl,
        "gateway/schema.graphql is out of date; regenerate it with \
         `UPDATE_SCHEMA=1 cargo test -p trafficbuster-gateway --test schema` and review the diff"
    );
}
