//! Named, self-reconnecting connections, and the credential check of agent logins.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::RespVersion;
use fred::types::config::ReconnectPolicy;

use crate::config::RedisConfig;
use crate::error::BusError;

/// Back-off between reconnection attempts, forever: an agent never gives up on Redis.
fn reconnect_policy() -> ReconnectPolicy {
    let mut policy = ReconnectPolicy::new_exponential(0, 100, 5_000, 2);
    policy.set_jitter(50);
    policy
}

fn builder(cfg: &RedisConfig, resp3: bool) -> Builder {
    let mut config = Config {
        server: cfg.address.server_config(),
        username: cfg.user.clone(),
        password: cfg.password.clone(),
        ..Default::default()
    };
    if resp3 {
        // In RESP3 a subscribed connection still accepts CLIENT SETNAME, so the event
        // connection can carry the agent's name like NS8's does.
        config.version = RespVersion::RESP3;
    }
    let mut builder = Builder::from_config(config);
    builder.set_policy(reconnect_policy()).with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(5);
        c.reconnect_on_auth_error = true;
        c.tcp.nodelay = Some(true);
    });
    builder
}

fn connect_error(cfg: &RedisConfig, source: fred::error::Error) -> BusError {
    BusError::Connect {
        address: cfg.address.to_string(),
        user: cfg.user.clone().unwrap_or_else(|| "default".into()),
        source,
    }
}

async fn keep_named<C: ClientLike + ClientInterface + EventInterface + Clone + Send + Sync + 'static>(
    client: &C,
    name: &str,
) -> Result<(), BusError> {
    client.client_setname(name).await?;
    let (c, n) = (client.clone(), name.to_owned());
    client.on_reconnect(move |_| {
        let (c, n) = (c.clone(), n.clone());
        async move {
            // Spawned so that a reconnect while a blocking command is queued does not
            // stall the event stream; the name follows as soon as the connection is free.
            tokio::spawn(async move {
                if let Err(e) = c.client_setname(&n).await {
                    tracing::warn!("cannot restore the Redis client name {n}: {e}");
                }
            });
            Ok(())
        }
    });
    Ok(())
}

/// Connect once and name the connection; fail with a clear error if Redis is not there.
pub async fn connect(cfg: &RedisConfig, name: &str) -> Result<Client, BusError> {
    let client = builder(cfg, false).build()?;
    client.init().await.map_err(|e| connect_error(cfg, e))?;
    keep_named(&client, name).await?;
    Ok(client)
}

/// Connect a subscriber (RESP3), named, whose subscriptions survive reconnects.
/// `capacity` bounds the messages buffered for a slow reader (older ones are dropped
/// and the reader told it lagged); the buffer is allocated up front.
pub async fn connect_subscriber(cfg: &RedisConfig, name: &str, capacity: usize) -> Result<SubscriberClient, BusError> {
    let client = builder(cfg, true)
        .with_performance_config(|p| p.broadcast_channel_capacity = capacity)
        .build_subscriber_client()?;
    client.init().await.map_err(|e| connect_error(cfg, e))?;
    keep_named(&client, name).await?;
    client.manage_subscriptions();
    Ok(client)
}

/// Like [`connect`], but wait for Redis as long as it takes (agents start before or
/// while Redis starts, and a worker's ACL user may not be replicated yet). Each distinct
/// error is logged once.
pub async fn connect_retrying(cfg: &RedisConfig, name: &str) -> Client {
    retry("waiting for Redis", || connect(cfg, name)).await
}

/// Like [`connect_retrying`], for request handlers (the api-server): while Redis is
/// away each command fails after `timeout` instead of waiting for the reconnection, so
/// a client gets an error rather than a hung request.
pub async fn connect_bounded_retrying(cfg: &RedisConfig, name: &str, timeout: Duration) -> Client {
    retry("waiting for Redis", || async {
        let client = builder(cfg, false).with_performance_config(|p| p.default_command_timeout = timeout).build()?;
        client.init().await.map_err(|e| connect_error(cfg, e))?;
        keep_named(&client, name).await?;
        Ok::<_, BusError>(client)
    })
    .await
}

/// How much longer than its longest server-side block a blocking connection may stay
/// silent before it is taken for dead (a half-open TCP connection to a vanished leader
/// never errors by itself) and reconnected.
const UNRESPONSIVE_MARGIN: Duration = Duration::from_secs(5);

/// Like [`connect_retrying`], for a connection that runs blocking commands which the
/// server ends after at most `longest_block` (`BLMOVE`, `XREAD BLOCK`). No command on it
/// has a client-side timeout, so an idle block is never an error; a connection silent
/// for longer than the block plus a margin is closed and reconnected instead.
pub async fn connect_blocking_retrying(cfg: &RedisConfig, name: &str, longest_block: Duration) -> Client {
    retry("waiting for Redis", || async {
        let client = builder(cfg, false)
            .with_connection_config(|c| {
                c.unresponsive = fred::types::config::UnresponsiveConfig {
                    max_timeout: Some(longest_block + UNRESPONSIVE_MARGIN),
                    interval: Duration::from_secs(1),
                }
            })
            .build()?;
        client.init().await.map_err(|e| connect_error(cfg, e))?;
        keep_named(&client, name).await?;
        Ok::<_, BusError>(client)
    })
    .await
}

pub async fn connect_subscriber_retrying(cfg: &RedisConfig, name: &str, capacity: usize) -> SubscriberClient {
    retry("waiting for Redis", || connect_subscriber(cfg, name, capacity)).await
}

/// Run `f` until it succeeds, with back-off from 100 ms to 5 s. Each distinct error is
/// logged once (as `<what>: <error>; retrying`), not at every attempt: an agent waits
/// for Redis as long as it takes, without flooding its log.
pub async fn retry<T, E, F, Fut>(what: &str, mut f: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last = String::new();
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                let msg = e.to_string();
                if msg != last {
                    tracing::warn!("{what}: {msg}; retrying");
                    last = msg;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Whether `user`/`password` are valid Redis credentials at `cfg`'s address (NS8's way
/// of logging agents in to the API: their ACL user is their identity). One connection,
/// no retry, closed at once. `Err` only when Redis cannot be reached.
pub async fn check_credentials(cfg: &RedisConfig, user: &str, password: &str) -> Result<bool, BusError> {
    let config = Config {
        server: cfg.address.server_config(),
        username: Some(user.to_owned()),
        password: Some(password.to_owned()),
        ..Default::default()
    };
    let client = Builder::from_config(config)
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
        .build()?;
    match client.init().await {
        Ok(_) => {
            let _ = client.quit().await;
            Ok(true)
        }
        Err(e) if *e.kind() == fred::error::ErrorKind::Auth || e.details().contains("WRONGPASS") => Ok(false),
        Err(e) => Err(connect_error(cfg, e)),
    }
}
