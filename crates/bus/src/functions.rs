//! The runtime's Redis Functions ([`protocol::functions`]): loading the library (the
//! cluster agent at its start, the test fixtures) and calling one of its functions.

use fred::error::{Error, ErrorKind};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, FromValue};
use protocol::functions::{LIBRARY, LIBRARY_NAME};

/// `FUNCTION LOAD REPLACE` the library: the running version replaces an older one in
/// one step, and Redis keeps it in its data files and replicates it to the workers.
pub async fn load(client: &Client) -> Result<(), Error> {
    let cmd = CustomCommand::new_static("FUNCTION", ClusterHash::Random, false);
    let name: String = client.custom(cmd, vec!["LOAD", "REPLACE", LIBRARY]).await?;
    if name != LIBRARY_NAME {
        return Err(Error::new(ErrorKind::Unknown, format!("FUNCTION LOAD answered {name:?}, not {LIBRARY_NAME:?}")));
    }
    Ok(())
}

/// `FCALL function numkeys keys... args...`. A library that is not loaded yet is named
/// in the error, with who loads it.
pub async fn fcall<R: FromValue>(
    client: &Client,
    function: &str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<R, Error> {
    let mut all = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(function.to_owned());
    all.push(keys.len().to_string());
    all.extend(keys);
    all.extend(args);
    let cmd = CustomCommand::new_static("FCALL", ClusterHash::FirstKey, false);
    client.custom(cmd, all).await.map_err(|e| {
        if e.details().contains("Function not found") {
            Error::new(
                e.kind().clone(),
                format!(
                    "Redis has no function {function}: the cluster agent loads the {LIBRARY_NAME} library at its \
                     start (is it running, and is this Redis its own or a replica of it?)"
                ),
            )
        } else {
            e
        }
    })
}
