//! The embedded topology every chaos scenario (and `tandem demo`) runs: three sites (hanoi
//! primary, hcm replica, danang witness), a volume group `vol` and optionally a SQLite group
//! `db`, on free local ports; and where those groups are in a status document. Pure but for
//! picking free ports.

use tandem_coordinator::status::{ClusterStatus, GroupStatus};

/// The volume group of the embedded topology.
pub const VOLUME_GROUP: &str = "vol";

/// The embedded local default: hanoi (primary), hcm (replica), danang (witness), one volume
/// group `vol` in `mode`; returns the TOML text and the ports it chose.
pub fn topology_text(
    volume_mib: u64,
    mode: &str,
    auto_failover: bool,
) -> std::io::Result<(String, Vec<(String, u16)>)> {
    let rpo = if mode == "sync" { "0s" } else { "2s" };
    let mut ports = Vec::new();
    let mut port = |name: &str| -> std::io::Result<u16> {
        let p = tandem_core::ports::free_port()?;
        ports.push((name.to_owned(), p));
        Ok(p)
    };
    let text = format!(
        r#"# Written by `tandem demo`: the embedded local default topology.
[cluster]
name = "demo"
lease_ttl = "2s"
drift_margin = "300ms"
heartbeat_interval = "250ms"
detect_after = "1500ms"
rpo_sample_interval = "1s"

[[sites]]
name = "hanoi"
jurisdiction = "VN"

[[sites]]
name = "hcm"
jurisdiction = "VN"

[[sites]]
name = "danang"
witness = true
jurisdiction = "VN"

[[nodes]]
name = "hanoi-coord"
site = "hanoi"
role = "coordinator"
listen = "127.0.0.1:{c1}"
data_dir = "data/hanoi-coord"

[[nodes]]
name = "hcm-coord"
site = "hcm"
role = "coordinator"
listen = "127.0.0.1:{c2}"
data_dir = "data/hcm-coord"

[[nodes]]
name = "danang-coord"
site = "danang"
role = "coordinator"
listen = "127.0.0.1:{c3}"
data_dir = "data/danang-coord"

[[nodes]]
name = "hanoi-rep"
site = "hanoi"
role = "replicator"
listen = "127.0.0.1:{r1}"
data_dir = "data/hanoi-rep"
nbd_listen = "127.0.0.1:{n1}"

[[nodes]]
name = "hcm-rep"
site = "hcm"
role = "replicator"
listen = "127.0.0.1:{r2}"
data_dir = "data/hcm-rep"
nbd_listen = "127.0.0.1:{n2}"

[[groups]]
name = "{VOLUME_GROUP}"
primary = "hanoi"
replica = "hcm"
mode = "{mode}"
rpo_target = "{rpo}"
rto_target = "15s"
sync_timeout = "1s"
auto_failover = {auto_failover}
allowed_jurisdictions = ["VN"]

[[groups.resources]]
name = "disk0"
kind = "volume"
size = "{volume_mib}MiB"
path = "volumes/hanoi/disk0.img"
replica_path = "volumes/hcm/disk0.img"
"#,
        c1 = port("hanoi-coord")?,
        c2 = port("hcm-coord")?,
        c3 = port("danang-coord")?,
        r1 = port("hanoi-rep")?,
        r2 = port("hcm-rep")?,
        n1 = port("hanoi-nbd")?,
        n2 = port("hcm-nbd")?,
    );
    Ok((text, ports))
}

/// The demo's database group: one SQLite database followed through its WAL.
pub const DB_GROUP: &str = "db";

/// The SQLite group `db` (resource `app`, at `databases/SITE/app.db`), appended to
/// [`topology_text`]: the demo runs it async without automatic failover (an application commit
/// never waits for Tandem; the demo fails over the volume group); `tandem chaos run` runs it in
/// the scenario's mode with its automatic failover.
pub fn db_group_text(mode: &str, auto_failover: bool) -> String {
    let rpo = if mode == "sync" { "0s" } else { "2s" };
    format!(
        r#"
[[groups]]
name = "{DB_GROUP}"
primary = "hanoi"
replica = "hcm"
mode = "{mode}"
rpo_target = "{rpo}"
rto_target = "15s"
sync_timeout = "1s"
auto_failover = {auto_failover}
allowed_jurisdictions = ["VN"]

[[groups.resources]]
name = "app"
kind = "sqlite"
path = "databases/hanoi/app.db"
replica_path = "databases/hcm/app.db"
"#
    )
}

/// The PostgreSQL group of the chaos runner's `postgres = true` workload.
pub const PG_GROUP: &str = "pg";
/// Its resource.
pub const PG_RESOURCE: &str = "db";

/// The PostgreSQL group `pg` (resource `db`: the primary's cluster at `pg/hanoi` on port
/// `port`, the standby's at `pg/hcm` on `replica_port`, WAL streamed through Tandem), appended
/// to [`topology_text`] in the scenario's mode and automatic failover. Its RPO target is the
/// volume group's; its RTO target allows for the standby's promotion.
pub fn pg_group_text(mode: &str, auto_failover: bool, port: u16, replica_port: u16) -> String {
    let rpo = if mode == "sync" { "0s" } else { "2s" };
    format!(
        r#"
[[groups]]
name = "{PG_GROUP}"
primary = "hanoi"
replica = "hcm"
mode = "{mode}"
rpo_target = "{rpo}"
rto_target = "30s"
auto_failover = {auto_failover}
allowed_jurisdictions = ["VN"]

[[groups.resources]]
name = "{PG_RESOURCE}"
kind = "postgres"
data_dir = "pg/hanoi"
replica_data_dir = "pg/hcm"
port = {port}
replica_port = {replica_port}
bin_dir = "{bin}"
stream = true
"#,
        bin = crate::pg::BIN
    )
}

/// The PostgreSQL group in a status document.
pub fn pg_group(st: &ClusterStatus) -> Option<&GroupStatus> {
    st.groups.iter().find(|g| g.name == PG_GROUP)
}

/// The database group in a status document.
pub fn db_group(st: &ClusterStatus) -> Option<&GroupStatus> {
    st.groups.iter().find(|g| g.name == DB_GROUP)
}

/// The demo's volume group in a status document.
pub fn group(st: &ClusterStatus) -> Option<&GroupStatus> {
    st.groups.iter().find(|g| g.name == VOLUME_GROUP)
}

/// True when the group is protected and its primary holds an active lease.
pub fn protected(g: Option<&GroupStatus>) -> bool {
    g.is_some_and(|g| {
        g.state == "protected" && g.lease.as_ref().is_some_and(|l| l.status == "active")
    })
}
