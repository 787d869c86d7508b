//! Cluster nodes started in the test process (`starling_server::start`) on a shared
//! PostgreSQL, for tests that need to reach into a node's tables; the process-based nodes of
//! the parent module are for tests that kill or restart nodes.

use std::net::SocketAddr;
use std::sync::Arc;

use starling_commands::exec::execute;
use starling_commands::spec::{Request, Response};
use starling_config::{ListenerModule, SqlConfig};
use starling_core::Server;
use starling_server::Node;
use starling_testkit::Client;

use super::PASSWORD;

/// What differs between the tests' nodes: their modules (`modules:` lines, two-space
/// indented after the first), extra listeners (list items) and extra top-level YAML.
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    pub modules: &'a str,
    pub listeners: &'a str,
    pub extra: &'a str,
    /// `cluster.discovery: sql` instead of `join_cluster`.
    pub sql_discovery: bool,
}

/// An in-process cluster node with its temporary data directory.
pub struct ClusterNode {
    pub node: Node,
    _dir: tempfile::TempDir,
}

impl ClusterNode {
    /// Starts node `name` on `db` with `cookie`, serving `localhost`.
    pub async fn start(name: &str, db: &SqlConfig, cookie: &str, options: Options<'_>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(data.join("cookie"), cookie).expect("cookie");
        let modules = if options.modules.is_empty() {
            "mod_disco: {}\n  mod_roster: {versioning: true}\n"
        } else {
            options.modules
        };
        let yaml = format!(
            "hosts: [localhost]\n\
             data_dir: {data}\n\
             loglevel: warning\n\
             listen:\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, starttls_required: true}}\n\
             {listeners}\
             modules:\n  {modules}\
             {extra}\
             sql_type: pgsql\nsql_server: {server}\nsql_port: {port}\nsql_database: {database}\n\
             sql_username: {user}\nsql_pool_size: 3\n\
             cluster: {{node_name: \"{name}\", listen: \"127.0.0.1:0\", discovery: {discovery}}}\n",
            data = data.display(),
            listeners = options.listeners,
            extra = options.extra,
            server = db.server,
            port = db.port.unwrap_or(5432),
            database = db.database.as_deref().unwrap_or("ejabberd"),
            user = db.username,
            discovery = if options.sql_discovery { "sql" } else { "none" },
        );
        let specs = starling_modules::specs();
        let config = starling_config::load_str(&yaml, "cluster.yml", &specs)
            .unwrap_or_else(|d| panic!("config rejected:\n{d}"));
        let node = starling_server::start(config, &starling_modules::catalogue())
            .await
            .expect("node starts");
        Self { node, _dir: dir }
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.node.server
    }

    /// The address of its cluster listener.
    pub fn address(&self) -> String {
        self.node
            .cluster
            .as_ref()
            .expect("clustered")
            .address()
            .to_owned()
    }

    /// Its XEP-0114 component listener, when it has one.
    pub fn component_address(&self) -> SocketAddr {
        self.node
            .s2s
            .iter()
            .find(|(_, m)| *m == ListenerModule::Service)
            .expect("component listener")
            .0
    }

    /// Runs a registry command on this node, as starlingctl would.
    pub async fn ctl(&self, command: &str, args: &[&str]) -> Response {
        let req = Request {
            command: command.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
        };
        execute(self.server(), &req).await
    }

    /// A connection that authenticated as `user` but has not bound a resource.
    pub async fn authenticate(&self, user: &str) -> Client {
        let addr = self.node.c2s.first().expect("c2s listener").0;
        let mut c = Client::connect(addr).await.expect("connect");
        c.open().await.expect("open");
        c.starttls().await.expect("starttls");
        c.auth_plain(user, PASSWORD).await.expect("auth");
        c
    }

    pub async fn login(&self, user: &str, resource: &str) -> Client {
        let mut c = self.authenticate(user).await;
        c.bind(resource).await.expect("bind");
        c
    }

    /// Logs in, sends initial presence and waits for its reflection.
    pub async fn online(&self, user: &str, resource: &str) -> Client {
        let mut c = self.login(user, resource).await;
        c.send("<presence/>").await.expect("presence");
        let me = format!("{user}@localhost/{resource}");
        c.wait_for(|e| e.name() == "presence" && e.attr("from") == Some(me.as_str()))
            .await
            .expect("own presence");
        c
    }
}
