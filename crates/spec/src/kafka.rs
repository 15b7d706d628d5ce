//! The Kafka client properties a pipeline may set: an allow-list, not a deny-list.
//!
//! librdkafka can load shared libraries (`plugin.library.paths`, `ssl.engine.location`,
//! `ssl.providers`), run shell commands (`sasl.kerberos.kinit.cmd`), read and write files
//! (`*.location`, `sasl.kerberos.keytab`, `debug` to the daemon's log) and send credentials to
//! any URL (`sasl.oauthbearer.token.endpoint.url`). A pipeline's author is not trusted with
//! the daemon's process, so only the properties listed here are accepted, each with a check
//! of its value; a property that is not listed is refused with a located error. The list
//! covers what users of a managed or self-hosted cluster need: security protocol, SASL
//! (PLAIN, SCRAM) credentials, TLS by PEM text, and client tuning within bounds that keep
//! one pipeline from taking the daemon's memory. docs/security.md prints the same table.

/// Which client a property applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A source's consumer.
    Consumer,
    /// A sink's producer.
    Producer,
}

/// What values a property takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// `true` or `false`.
    Bool,
    /// An integer in `min..=max`.
    Int(i64, i64),
    /// One of these words (compared without case).
    OneOf(&'static [&'static str]),
    /// A comma-separated list of these words.
    ListOf(&'static [&'static str]),
    /// Free text that is not secret (a client id, a PEM certificate).
    Text,
    /// A secret: the value must be exactly `${NAME}`, and is never shown.
    Secret,
}

/// One allowed property.
#[derive(Debug, Clone, Copy)]
pub struct Property {
    /// librdkafka's name.
    pub name: &'static str,
    /// `None` for both clients.
    pub client: Option<Client>,
    /// Its values.
    pub value: Value,
    /// What it is for, for the docs.
    pub doc: &'static str,
}

const fn both(name: &'static str, value: Value, doc: &'static str) -> Property {
    Property {
        name,
        client: None,
        value,
        doc,
    }
}
const fn consumer(name: &'static str, value: Value, doc: &'static str) -> Property {
    Property {
        name,
        client: Some(Client::Consumer),
        value,
        doc,
    }
}
const fn producer(name: &'static str, value: Value, doc: &'static str) -> Property {
    Property {
        name,
        client: Some(Client::Producer),
        value,
        doc,
    }
}

const MB: i64 = 1024 * 1024;
const MINUTE_MS: i64 = 60_000;

/// Every property a pipeline may set.
pub const ALLOWED: &[Property] = &[
    both(
        "security.protocol",
        Value::OneOf(&["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]),
        "how to talk to the brokers",
    ),
    both(
        "sasl.mechanism",
        Value::OneOf(&["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
        "SASL mechanism (Kerberos and OAUTHBEARER need daemon-side configuration: refused)",
    ),
    both(
        "sasl.mechanisms",
        Value::OneOf(&["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
        "alias of sasl.mechanism",
    ),
    both("sasl.username", Value::Text, "SASL user name"),
    both("sasl.password", Value::Secret, "SASL password"),
    both(
        "ssl.ca.pem",
        Value::Text,
        "CA certificate(s) to verify the brokers, PEM text",
    ),
    both(
        "ssl.certificate.pem",
        Value::Text,
        "client certificate, PEM text",
    ),
    both("ssl.key.pem", Value::Secret, "client private key, PEM text"),
    both(
        "ssl.key.password",
        Value::Secret,
        "passphrase of the private key",
    ),
    both(
        "ssl.endpoint.identification.algorithm",
        Value::OneOf(&["none", "https"]),
        "check the broker's host name in its certificate",
    ),
    both(
        "enable.ssl.certificate.verification",
        Value::Bool,
        "verify the broker's certificate",
    ),
    both("ssl.cipher.suites", Value::Text, "TLS cipher suites"),
    both("ssl.curves.list", Value::Text, "TLS curves"),
    both("ssl.sigalgs.list", Value::Text, "TLS signature algorithms"),
    both("client.id", Value::Text, "client id shown to the brokers"),
    both(
        "client.rack",
        Value::Text,
        "rack id, for fetching from the nearest replica",
    ),
    both(
        "broker.address.family",
        Value::OneOf(&["any", "v4", "v6"]),
        "IP version to connect with",
    ),
    both(
        "client.dns.lookup",
        Value::OneOf(&[
            "use_all_dns_ips",
            "resolve_canonical_bootstrap_servers_only",
        ]),
        "how bootstrap names resolve",
    ),
    both(
        "socket.timeout.ms",
        Value::Int(10, 5 * MINUTE_MS),
        "network request timeout",
    ),
    both(
        "socket.connection.setup.timeout.ms",
        Value::Int(1000, 5 * MINUTE_MS),
        "connection setup timeout",
    ),
    both("socket.keepalive.enable", Value::Bool, "TCP keep-alive"),
    both("socket.nagle.disable", Value::Bool, "TCP_NODELAY"),
    both(
        "socket.send.buffer.bytes",
        Value::Int(0, 16 * MB),
        "socket send buffer (0: system default)",
    ),
    both(
        "socket.receive.buffer.bytes",
        Value::Int(0, 16 * MB),
        "socket receive buffer (0: system default)",
    ),
    both(
        "connections.max.idle.ms",
        Value::Int(0, 60 * MINUTE_MS),
        "close idle connections after",
    ),
    both(
        "reconnect.backoff.ms",
        Value::Int(0, 10 * MINUTE_MS),
        "first reconnect backoff",
    ),
    both(
        "reconnect.backoff.max.ms",
        Value::Int(0, 10 * MINUTE_MS),
        "largest reconnect backoff",
    ),
    both(
        "retry.backoff.ms",
        Value::Int(1, 5 * MINUTE_MS),
        "backoff before retrying a request",
    ),
    both(
        "retry.backoff.max.ms",
        Value::Int(1, 5 * MINUTE_MS),
        "largest retry backoff",
    ),
    both(
        "metadata.max.age.ms",
        Value::Int(1, 24 * 60 * MINUTE_MS),
        "metadata refresh",
    ),
    both(
        "topic.metadata.refresh.interval.ms",
        Value::Int(-1, 60 * MINUTE_MS),
        "periodic metadata refresh",
    ),
    both(
        "message.max.bytes",
        Value::Int(1000, 64 * MB),
        "largest request or message",
    ),
    both(
        "receive.message.max.bytes",
        Value::Int(1000, 256 * MB),
        "largest response",
    ),
    consumer(
        "session.timeout.ms",
        Value::Int(1000, 30 * MINUTE_MS),
        "group session timeout",
    ),
    consumer(
        "heartbeat.interval.ms",
        Value::Int(1, 10 * MINUTE_MS),
        "group heartbeat",
    ),
    consumer(
        "max.poll.interval.ms",
        Value::Int(1, 24 * 60 * MINUTE_MS),
        "largest time between polls",
    ),
    consumer("group.instance.id", Value::Text, "static group membership"),
    consumer(
        "partition.assignment.strategy",
        Value::ListOf(&["range", "roundrobin", "cooperative-sticky"]),
        "how the group assigns partitions",
    ),
    consumer(
        "isolation.level",
        Value::OneOf(&["read_committed", "read_uncommitted"]),
        "whether to read aborted transactions' records",
    ),
    consumer(
        "fetch.min.bytes",
        Value::Int(1, 64 * MB),
        "smallest fetch response",
    ),
    consumer(
        "fetch.max.bytes",
        Value::Int(1, 256 * MB),
        "largest fetch response",
    ),
    consumer(
        "fetch.wait.max.ms",
        Value::Int(0, 10_000),
        "longest the broker waits to fill a fetch",
    ),
    consumer(
        "max.partition.fetch.bytes",
        Value::Int(1, 64 * MB),
        "largest fetch per partition",
    ),
    consumer(
        "fetch.message.max.bytes",
        Value::Int(1, 64 * MB),
        "alias of max.partition.fetch.bytes",
    ),
    consumer(
        "fetch.error.backoff.ms",
        Value::Int(0, 5 * MINUTE_MS),
        "backoff after a fetch error",
    ),
    consumer(
        "fetch.queue.backoff.ms",
        Value::Int(0, 5 * MINUTE_MS),
        "backoff when the local queue is full",
    ),
    consumer(
        "queued.min.messages",
        Value::Int(1, 1_000_000),
        "messages prefetched per partition",
    ),
    consumer(
        "queued.max.messages.kbytes",
        Value::Int(1, 128 * 1024),
        "prefetch memory per partition, KiB (bounded: the daemon's memory is shared)",
    ),
    consumer("check.crcs", Value::Bool, "verify CRC32 of messages"),
    producer(
        "transaction.timeout.ms",
        Value::Int(1000, 15 * MINUTE_MS),
        "longest a transaction of the exactly-once sinks may stay open before the broker aborts it (default 30 s; at most the broker's transaction.max.timeout.ms, 15 min by default)",
    ),
    producer(
        "compression.type",
        Value::OneOf(&["none", "gzip", "snappy", "lz4", "zstd"]),
        "compression of produced batches",
    ),
    producer(
        "compression.codec",
        Value::OneOf(&["none", "gzip", "snappy", "lz4", "zstd"]),
        "alias of compression.type",
    ),
    producer(
        "compression.level",
        Value::Int(-1, 22),
        "compression level (-1: the codec's default)",
    ),
    producer("linger.ms", Value::Int(0, 10_000), "wait to fill a batch"),
    producer(
        "queue.buffering.max.ms",
        Value::Int(0, 10_000),
        "alias of linger.ms",
    ),
    producer("batch.size", Value::Int(1, 64 * MB), "largest batch, bytes"),
    producer(
        "batch.num.messages",
        Value::Int(1, 1_000_000),
        "largest batch, messages",
    ),
    producer(
        "queue.buffering.max.messages",
        Value::Int(1, 1_000_000),
        "messages waiting to be sent",
    ),
    producer(
        "queue.buffering.max.kbytes",
        Value::Int(1, 1024 * 1024),
        "memory of messages waiting to be sent, KiB (bounded)",
    ),
    producer(
        "message.timeout.ms",
        Value::Int(1000, 15 * MINUTE_MS),
        "give up delivering a message after",
    ),
    producer(
        "delivery.timeout.ms",
        Value::Int(1000, 15 * MINUTE_MS),
        "alias of message.timeout.ms",
    ),
    producer(
        "request.timeout.ms",
        Value::Int(1, 15 * MINUTE_MS),
        "produce request timeout",
    ),
    producer(
        "retries",
        Value::Int(0, i32::MAX as i64),
        "retries of a failed produce",
    ),
    producer(
        "message.send.max.retries",
        Value::Int(0, i32::MAX as i64),
        "alias of retries",
    ),
    producer(
        "max.in.flight.requests.per.connection",
        Value::Int(1, 5),
        "requests in flight (at most 5 with the idempotent producer)",
    ),
    producer(
        "max.in.flight",
        Value::Int(1, 5),
        "alias of max.in.flight.requests.per.connection",
    ),
    producer(
        "sticky.partitioning.linger.ms",
        Value::Int(0, 900_000),
        "sticky partitioner linger for unkeyed messages",
    ),
    producer(
        "partitioner",
        Value::OneOf(&[
            "random",
            "consistent",
            "consistent_random",
            "murmur2",
            "murmur2_random",
            "fnv1a",
            "fnv1a_random",
        ]),
        "how keys map to partitions",
    ),
];

/// Properties the engine sets itself.
pub const ENGINE_OWNED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "transactional.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
];

/// Why a property that is not allowed is dangerous, for the best-known ones.
fn danger(name: &str) -> Option<&'static str> {
    Some(match name {
        "plugin.library.paths"
        | "ssl.engine.location"
        | "ssl.providers"
        | "ssl_engine_id"
        | "ssl.engine.id" => "it loads code into the engine's process",
        "sasl.kerberos.kinit.cmd" => "it runs a shell command in the engine's process",
        "sasl.kerberos.keytab" | "sasl.kerberos.principal" | "sasl.kerberos.service.name" => {
            "Kerberos runs `kinit` with these values in a shell"
        }
        "sasl.oauthbearer.token.endpoint.url" | "sasl.oauthbearer.config" => {
            "it sends credentials to a URL the pipeline chooses"
        }
        "debug" | "log_level" | "log.queue" | "log.connection.close" => {
            "it floods the engine's log, which other pipelines share"
        }
        n if n.ends_with(".location") || n.contains("keystore") => {
            "it reads a file of the engine's machine; give certificates and keys as PEM text (`ssl.ca.pem`, `ssl.certificate.pem`, `ssl.key.pem: ${NAME}`)"
        }
        _ => return None,
    })
}

/// The allowed property `name`, if any.
pub fn lookup(name: &str) -> Option<&'static Property> {
    ALLOWED.iter().find(|p| p.name == name)
}

/// Whether `name` holds a secret.
pub fn is_secret(name: &str) -> bool {
    lookup(name).is_some_and(|p| p.value == Value::Secret)
        || ["password", "secret", "token", "private", "jaas", "key.pem"]
            .iter()
            .any(|m| name.to_ascii_lowercase().contains(m))
}

/// Checks one property for `client`: `Err` with a message that never repeats the value of a
/// secret. `value` is the interpolated value, `raw` the text as written.
pub fn check(name: &str, value: &str, raw: &str, client: Client) -> Result<(), String> {
    if ENGINE_OWNED.contains(&name) {
        return Err(format!(
            "`{name}` is set by the engine and cannot be overridden; remove it"
        ));
    }
    let Some(p) = lookup(name) else {
        if let Some(why) = danger(name) {
            return Err(format!("`{name}` is not allowed: {why}"));
        }
        let names = ALLOWED
            .iter()
            .filter(|p| p.client.is_none_or(|c| c == client))
            .map(|p| p.name);
        return Err(format!(
            "`{name}` is not an allowed Kafka property{}; see the allow-list in docs/security.md",
            crate::diag::suggestion(name, names)
        ));
    };
    if let Some(only) = p.client
        && only != client
    {
        let (is, other) = match only {
            Client::Consumer => ("consumer", "source"),
            Client::Producer => ("producer", "sink"),
        };
        return Err(format!(
            "`{name}` is a {is} property; set it on a {other} instead"
        ));
    }
    // A value from the environment is shown as written, never resolved: it may be a secret.
    let shown = if raw == value {
        format!("`{value}`")
    } else {
        format!("`{raw}` (from the environment)")
    };
    match p.value {
        Value::Secret => {
            if crate::interp::exact_reference(raw).is_none() {
                return Err(format!(
                    "`{name}` is a secret: write exactly `${{NAME}}` (no default, nothing around it) and give the value in the environment, never in the file"
                ));
            }
            Ok(())
        }
        Value::Text => Ok(()),
        Value::Bool => match value.to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(()),
            _ => Err(format!("`{name}` is {shown}: give `true` or `false`")),
        },
        Value::Int(min, max) => match value.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(()),
            _ => Err(format!(
                "`{name}` is {shown}: give an integer from {min} to {max}"
            )),
        },
        Value::OneOf(words) => {
            if words.iter().any(|w| w.eq_ignore_ascii_case(value.trim())) {
                Ok(())
            } else {
                Err(format!(
                    "`{name}` is {shown}: give one of {}",
                    crate::diag::one_of(words.iter().copied())
                ))
            }
        }
        Value::ListOf(words) => {
            let bad = value
                .split(',')
                .map(str::trim)
                .find(|v| !words.iter().any(|w| w.eq_ignore_ascii_case(v)));
            match bad {
                None => Ok(()),
                Some(_) => Err(format!(
                    "`{name}` is {shown}: give a comma-separated list of {}",
                    crate::diag::one_of(words.iter().copied())
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_loads_code_runs_commands_or_reads_files() {
        for name in [
            "plugin.library.paths",
            "sasl.kerberos.kinit.cmd",
            "ssl.engine.location",
            "ssl.ca.location",
            "ssl.keystore.location",
            "sasl.oauthbearer.token.endpoint.url",
            "debug",
        ] {
            let e = check(name, "x", "x", Client::Consumer).expect_err(name);
            assert!(e.contains("not allowed"), "{name}: {e}");
        }
        let e = check("bootstrap.servers", "h:1", "h:1", Client::Producer).expect_err("owned");
        assert!(e.contains("set by the engine"), "{e}");
        let e = check("linger.mss", "5", "5", Client::Producer).expect_err("typo");
        assert!(e.contains("did you mean `linger.ms`"), "{e}");
    }

    #[test]
    fn secrets_must_be_exactly_one_variable_and_are_never_echoed() {
        assert!(check("sasl.password", "pw", "${KAFKA_PW}", Client::Consumer).is_ok());
        for raw in [
            "hunter2",
            "hunter2$",
            "hunter2$$",
            "hunter2${NOPE:-}",
            "${NOPE:-hunter2}",
            "${A}${B}",
            " ${A}",
        ] {
            let e = check("sasl.password", "hunter2", raw, Client::Consumer).expect_err(raw);
            assert!(!e.contains("hunter2"), "{raw}: {e}");
        }
        assert!(check("ssl.key.pem", "k", "-----BEGIN", Client::Producer).is_err());
        assert!(is_secret("sasl.password") && is_secret("ssl.key.pem"));
        assert!(is_secret("sasl.jaas.config") && !is_secret("sasl.username"));
    }

    #[test]
    fn values_are_checked_against_their_kind_and_client() {
        assert!(check("linger.ms", "5", "5", Client::Producer).is_ok());
        assert!(check("linger.ms", "5", "5", Client::Consumer).is_err());
        assert!(
            check(
                "queued.max.messages.kbytes",
                "2097151",
                "2097151",
                Client::Consumer
            )
            .is_err()
        );
        assert!(
            check(
                "security.protocol",
                "SASL_SSL",
                "SASL_SSL",
                Client::Consumer
            )
            .is_ok()
        );
        assert!(check("sasl.mechanism", "GSSAPI", "GSSAPI", Client::Consumer).is_err());
        assert!(
            check(
                "partition.assignment.strategy",
                "range, cooperative-sticky",
                "range, cooperative-sticky",
                Client::Consumer
            )
            .is_ok()
        );
        assert!(check("check.crcs", "yes", "yes", Client::Consumer).is_err());
    }
}
