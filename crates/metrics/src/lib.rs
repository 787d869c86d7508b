//! Starling's Prometheus metrics: every family the node exports, in one registry per node
//! (DESIGN.md §10; no global registry, so in-process test nodes never share counters).
//!
//! Two kinds of families live here:
//! - **Read at scrape time** from `starling_core::counters::Counters` (sessions by transport,
//!   stanzas routed by kind, authentications by mechanism and result, routing latency). Core
//!   and the connection crates bump plain atomics and never see this crate; a [`Collector`]
//!   turns the atomics into families when `/metrics` is scraped.
//! - **Owned here** and updated through handles resolved once at start (DESIGN.md §8): the
//!   cluster link families, which the cluster crate sets, and HTTP requests by handler.
//!
//! Names follow the Prometheus conventions: the `starling_` prefix, `_total` on counters,
//! base units in the name (`_seconds`), and labels with bounded values only (an enum, a
//! configured handler name, a cluster node name), never a JID or an address.

#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use starling_core::counters::{self, Counters, Transport};
use starling_storage::timing::QueryTimings;

/// The `Content-Type` of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the cluster link families: the peer node's name (bounded by the cluster size).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's node name, e.g. `starling@n2`.
    pub peer: String,
}

/// Labels of HTTP request counts: the handler module serving the path and the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The handler, as configured in `request_handlers` (`mod_http_api`, `/metrics`...).
    pub handler: String,
    /// The response status code.
    pub code: u16,
}

/// Every metric family of one node.
pub struct Metrics {
    registry: Registry,
    /// `starling_cluster_link_up{peer}`: 1 while the mesh link to `peer` is established, 0
    /// while it is down. Set by the cluster crate.
    pub cluster_link_up: Family<PeerLabels, Gauge>,
    /// `starling_cluster_stanzas_forwarded_total{peer}`: stanzas sent to `peer` over the mesh.
    pub cluster_forwarded: Family<PeerLabels, Counter>,
    /// `starling_http_requests_total{handler,code}`: HTTP requests answered.
    pub http_requests: Family<HttpLabels, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Builds the registry for a node whose core counts into `counters`.
    pub fn new(counters: Arc<Counters>) -> Self {
        Self::with_storage(counters, None)
    }

    /// Like [`Self::new`], also exporting the storage backend's call latencies
    /// (`starling_storage_query_duration_seconds{op}`) when it times them.
    pub fn with_storage(counters: Arc<Counters>, storage: Option<Arc<QueryTimings>>) -> Self {
        let mut registry = Registry::with_prefix("starling");
        let cluster_link_up = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "cluster_link_up",
            "Whether the mesh link to a peer node is up (1) or down (0)",
            cluster_link_up.clone(),
        );
        let cluster_forwarded = Family::<PeerLabels, Counter>::default();
        registry.register(
            "cluster_stanzas_forwarded",
            "Stanzas forwarded to a peer node over the mesh",
            cluster_forwarded.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by handler and status code",
            http_requests.clone(),
        );
        registry.register_collector(Box::new(CoreCollector { counters }));
        if let Some(timings) = storage {
            registry.register_collector(Box::new(StorageCollector { timings }));
        }
        Self {
            registry,
            cluster_link_up,
            cluster_forwarded,
            http_requests,
        }
    }

    /// The OpenMetrics text exposition of every family, ending with `# EOF`.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts one HTTP request answered by `handler` with `code`.
    pub fn http_request(&self, handler: &str, code: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                handler: handler.to_owned(),
                code,
            })
            .inc();
    }
}

/// Reads the storage backend's per-operation latencies at scrape time.
#[derive(Debug)]
struct StorageCollector {
    timings: Arc<QueryTimings>,
}

impl Collector for StorageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "storage_query_duration_seconds",
            "Time taken by storage calls (one call may run several statements), by operation",
            None,
            MetricType::Histogram,
        )?;
        for (op, h) in self.timings.snapshot() {
            let labels = [("op", op)];
            family
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    h.sum, h.count, &h.buckets, None,
                )?;
        }
        Ok(())
    }
}

/// Reads the core's atomics at scrape time.
#[derive(Debug)]
struct CoreCollector {
    counters: Arc<Counters>,
}

impl Collector for CoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let c = &self.counters;

        let mut family = encoder.encode_descriptor(
            "c2s_sessions",
            "Client sessions bound on this node, by transport",
            None,
            MetricType::Gauge,
        )?;
        for t in Transport::ALL {
            let labels = [("transport", t.label())];
            ConstGauge::new(c.sessions(t)).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "stanzas_routed",
            "Stanzas routed, by kind (including errors the server generated)",
            None,
            MetricType::Counter,
        )?;
        for kind in counters::KINDS {
            let labels = [("kind", counters::kind_label(kind))];
            ConstCounter::new(c.stanzas_routed(kind)).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "stanzas_delivered",
            "Stanzas written to client connections (TCP, WebSocket, BOSH), by kind",
            None,
            MetricType::Counter,
        )?;
        for kind in counters::KINDS {
            let labels = [("kind", counters::kind_label(kind))];
            ConstCounter::new(c.stanzas_delivered(kind)).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "c2s_auth",
            "Client SASL authentications, by mechanism and result",
            None,
            MetricType::Counter,
        )?;
        for mechanism in counters::mechanisms() {
            for (result, success) in [("success", true), ("failure", false)] {
                let labels = [
                    ("mechanism", counters::mechanism_label(mechanism)),
                    ("result", result),
                ];
                ConstCounter::new(c.auths(mechanism, success))
                    .encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "offline_messages",
            "Offline messages (XEP-0160): stored, refused for a full queue, flushed at login, \
             restored after an interrupted flush",
            None,
            MetricType::Counter,
        )?;
        for event in counters::OfflineEvent::ALL {
            let labels = [("event", event.label())];
            ConstCounter::new(c.offline_total(event)).encode(family.encode_family(&labels)?)?;
        }

        let abuse = c.abuse();
        let family = encoder.encode_descriptor(
            "bans",
            "Addresses banned by mod_fail2ban after repeated authentication failures",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(abuse.bans_total()).encode(family)?;
        let family = encoder.encode_descriptor(
            "bans_active",
            "Addresses banned right now (as of the last change or sweep of the ban table)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(abuse.bans_active()).encode(family)?;
        let mut family = encoder.encode_descriptor(
            "connections_refused",
            "Connections refused at accept, by reason (banned, max_connections, per_ip, rate)",
            None,
            MetricType::Counter,
        )?;
        for reason in starling_core::ban::Refusal::ALL {
            let labels = [("reason", reason.label())];
            ConstCounter::new(abuse.refused_total(reason))
                .encode(family.encode_family(&labels)?)?;
        }

        let routing = c.routing().snapshot();
        let mut family = encoder.encode_descriptor(
            "routing_duration_seconds",
            "Time to route one stanza received from a connection to its destination",
            None,
            MetricType::Histogram,
        )?;
        family.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            routing.sum,
            routing.count,
            &routing.buckets,
            None,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use starling_core::counters::KINDS;

    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn core_counters_are_exported_at_scrape_time() {
        let counters = Arc::new(Counters::default());
        let metrics = Metrics::new(counters.clone());
        let _session = counters.session_opened(Transport::WebSocket);
        let [message, _, iq] = KINDS;
        counters.stanza_routed(message);
        counters.stanza_routed(iq);
        counters.stanza_routed(iq);
        counters.auth(None, false);
        counters.routing().observe(Duration::from_micros(30));
        let text = metrics.encode().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE starling_c2s_sessions gauge"),
            "{text}"
        );
        assert_eq!(
            line(&text, "starling_c2s_sessions{transport=\"websocket\"}"),
            Some("starling_c2s_sessions{transport=\"websocket\"} 1")
        );
        assert_eq!(
            line(&text, "starling_stanzas_routed_total{kind=\"iq\"}"),
            Some("starling_stanzas_routed_total{kind=\"iq\"} 2")
        );
        assert_eq!(
            line(
                &text,
                "starling_c2s_auth_total{mechanism=\"other\",result=\"failure\"}"
            ),
            Some("starling_c2s_auth_total{mechanism=\"other\",result=\"failure\"} 1")
        );
        assert_eq!(
            line(&text, "starling_routing_duration_seconds_count"),
            Some("starling_routing_duration_seconds_count 1")
        );
        assert_eq!(
            line(
                &text,
                "starling_routing_duration_seconds_bucket{le=\"0.00005\"}"
            ),
            Some("starling_routing_duration_seconds_bucket{le=\"0.00005\"} 1")
        );
        assert_eq!(
            line(
                &text,
                "starling_routing_duration_seconds_bucket{le=\"+Inf\"}"
            ),
            Some("starling_routing_duration_seconds_bucket{le=\"+Inf\"} 1")
        );
    }

    #[test]
    fn abuse_families_are_exported() {
        let counters = Arc::new(Counters::default());
        let metrics = Metrics::new(counters.clone());
        counters.abuse().refused(starling_core::ban::Refusal::PerIp);
        let text = metrics.encode().unwrap();
        assert!(text.contains("# TYPE starling_bans counter"), "{text}");
        assert_eq!(
            line(&text, "starling_bans_total"),
            Some("starling_bans_total 0")
        );
        assert_eq!(
            line(&text, "starling_bans_active"),
            Some("starling_bans_active 0")
        );
        assert_eq!(
            line(
                &text,
                "starling_connections_refused_total{reason=\"per_ip\"}"
            ),
            Some("starling_connections_refused_total{reason=\"per_ip\"} 1")
        );
    }

    #[test]
    fn owned_families_are_exported() {
        let metrics = Metrics::new(Arc::new(Counters::default()));
        let peer = PeerLabels {
            peer: "starling@n2".into(),
        };
        metrics.cluster_link_up.get_or_create(&peer).set(1);
        metrics.cluster_forwarded.get_or_create(&peer).inc_by(3);
        metrics.http_request("mod_http_api", 401);
        metrics.http_request("mod_http_api", 401);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("starling_cluster_link_up{peer=\"starling@n2\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("starling_cluster_stanzas_forwarded_total{peer=\"starling@n2\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "starling_http_requests_total{handler=\"mod_http_api\",code=\"401\"} 2\n"
            ),
            "{text}"
        );
    }
}
