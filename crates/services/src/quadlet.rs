//! A strict subset of Podman's quadlet `.container` format: the services a module
//! declares in `imageroot/services/<name>.container`.
//!
//! Read at sight by a Podman user, checked strictly: an unknown section or key is an
//! error naming the file and line, never silently ignored. One extension: `${NAME}`
//! is replaced by the module's environment (`state/environment`, then the agent's),
//! so images and ports come from the labels and the allocated ports. The supported
//! keys are documented in `docs/modules.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One published port: `[ip:]host:container[/proto]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

/// One `Volume=`: a named volume of the module's user, or a bind of an absolute path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Volume {
    Named { name: String, dest: String, options: Vec<String> },
    Bind { source: PathBuf, dest: String, options: Vec<String> },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Restart {
    #[default]
    No,
    OnFailure,
    Always,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// The file's stem: how actions and `module-service` name it.
    pub name: String,
    pub description: Option<String>,
    pub container_name: String,
    pub image: String,
    pub exec: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub publish: Vec<Publish>,
    pub volumes: Vec<Volume>,
    pub labels: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub restart: Restart,
    /// `RunInit=true`: a minimal init as PID 1 forwards signals and reaps children,
    /// for programs that ignore SIGTERM as PID 1.
    pub run_init: bool,
    /// `StopTimeout=`: seconds between the stop signal and SIGKILL.
    pub stop_timeout: Option<u64>,
}

/// Whether `name` may name a service (and so a container).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Replace `${NAME}` with its value; an unknown name or an unclosed `${` is an error.
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed \"${{\" in {text:?}"))?;
        let name = &after[..end];
        let value = env.get(name).ok_or_else(|| format!("${{{name}}} is not set in the module's environment"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Split a command line as systemd does for `Exec=`: whitespace separates words,
/// single and double quotes group, backslash escapes inside double quotes and outside.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed single quote in {line:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.push(chars.next().ok_or_else(|| format!("dangling backslash in {line:?}"))?),
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed double quote in {line:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next().ok_or_else(|| format!("dangling backslash in {line:?}"))?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    s.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{what} port {s:?} is not a port number"))
}

fn parse_publish(v: &str) -> Result<Publish, String> {
    let (spec, protocol) = match v.rsplit_once('/') {
        Some((s, p)) if matches!(p, "tcp" | "udp") => (s, p.to_owned()),
        Some((_, p)) => return Err(format!("protocol {p:?} is not tcp or udp")),
        None => (v, "tcp".to_owned()),
    };
    // An IPv6 host address is bracketed: [::1]:8080:80.
    let (host_ip, ports) = if let Some(rest) = spec.strip_prefix('[') {
        let (ip, rest) = rest.split_once("]:").ok_or_else(|| format!("bad address in {v:?}"))?;
        (Some(ip.to_owned()), rest)
    } else {
        match spec.matches(':').count() {
            1 => (None, spec),
            2 => {
                let (ip, rest) = spec.split_once(':').expect("two colons");
                ((!ip.is_empty()).then(|| ip.to_owned()), rest)
            }
            _ => return Err(format!("{v:?} is not [ip:]host_port:container_port[/protocol]")),
        }
    };
    if let Some(ip) = &host_ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| format!("{ip:?} is not an IP address"))?;
    }
    let (host, container) = ports.split_once(':').ok_or_else(|| format!("{v:?} lacks host_port:container_port"))?;
    Ok(Publish {
        host_ip,
        host_port: parse_port(host, "host")?,
        container_port: parse_port(container, "container")?,
        protocol,
    })
}

fn parse_volume(v: &str) -> Result<Volume, String> {
    let mut parts = v.split(':');
    let (Some(source), Some(dest)) = (parts.next(), parts.next()) else {
        return Err(format!("{v:?} is not source:destination[:options]"));
    };
    let options: Vec<String> = parts.next().map(|o| o.split(',').map(str::to_owned).collect()).unwrap_or_default();
    if parts.next().is_some() {
        return Err(format!("{v:?} has too many ':'"));
    }
    if !dest.starts_with('/') {
        return Err(format!("volume destination {dest:?} is not an absolute path"));
    }
    if let Some(o) = options.iter().find(|o| !matches!(o.as_str(), "ro" | "rw" | "z" | "Z" | "U")) {
        return Err(format!("volume option {o:?} is not one of ro, rw, z, Z, U"));
    }
    if source.starts_with('/') {
        Ok(Volume::Bind { source: PathBuf::from(source), dest: dest.to_owned(), options })
    } else if valid_name(source) {
        Ok(Volume::Named { name: source.to_owned(), dest: dest.to_owned(), options })
    } else {
        Err(format!("volume source {source:?} is neither a volume name nor an absolute path"))
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean (true or false)")),
    }
}

fn parse_restart(v: &str) -> Result<Restart, String> {
    match v {
        "no" => Ok(Restart::No),
        "on-failure" => Ok(Restart::OnFailure),
        "always" => Ok(Restart::Always),
        _ => Err(format!("Restart={v:?}: expected no, on-failure or always")),
    }
}

/// Parse the text of `<name>.container`. `env` expands `${NAME}`; relative
/// `EnvironmentFile=` paths are read from `state_dir`.
pub fn parse(name: &str, text: &str, env: &BTreeMap<String, String>, state_dir: &Path) -> Result<Service, String> {
    if !valid_name(name) {
        return Err(format!("{name:?} is not a service name (letters, digits, - _ .)"));
    }
    let mut svc = Service { name: name.to_owned(), container_name: name.to_owned(), ..Service::default() };
    let mut section = String::new();
    let mut image = None;
    // Continuation lines end with a backslash, as in systemd.
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let (n, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(head) = line.strip_suffix('\\') {
            acc.push_str(head);
            acc.push(' ');
            pending = Some((n, acc));
        } else {
            acc.push_str(line);
            logical.push((n, acc));
        }
    }
    if let Some(p) = pending {
        logical.push(p);
    }
    for (n, line) in logical {
        let at = |e: String| format!("{name}.container line {n}: {e}");
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[') {
            section = s.strip_suffix(']').ok_or_else(|| at(format!("bad section header {line:?}")))?.to_owned();
            if !matches!(section.as_str(), "Unit" | "Container" | "Service" | "Install") {
                return Err(at(format!("section [{section}] is not supported (Unit, Container, Service, Install)")));
            }
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| at(format!("{line:?} is not Key=Value")))?;
        let (key, raw_value) = (key.trim(), value.trim());
        let value = expand(raw_value, env).map_err(at)?;
        match (section.as_str(), key) {
            ("", _) => return Err(at(format!("{key}= comes before any section"))),
            ("Unit", "Description") => svc.description = Some(value),
            // Ordering among a module's services: all start together here.
            ("Unit", "After" | "Before" | "Requires" | "Wants" | "Documentation") => {}
            ("Container", "Image") => image = Some(value),
            ("Container", "Exec") => svc.exec = split_words(&value).map_err(at)?,
            ("Container", "ContainerName") => {
                if !valid_name(&value) {
                    return Err(at(format!("ContainerName={value:?} is not a container name")));
                }
                svc.container_name = value;
            }
            ("Container", "Environment") => {
                for word in split_words(&value).map_err(at)? {
                    let (k, v) = word.split_once('=').ok_or_else(|| at(format!("{word:?} is not NAME=value")))?;
                    svc.environment.insert(k.to_owned(), v.to_owned());
                }
            }
            ("Container", "EnvironmentFile") => {
                let path = state_dir.join(&value);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| at(format!("EnvironmentFile {}: {e}", path.display())))?;
                svc.environment.extend(protocol::envfile::parse(&text));
            }
            ("Container", "PublishPort") => svc.publish.push(parse_publish(&value).map_err(at)?),
            ("Container", "Volume") => svc.volumes.push(parse_volume(&value).map_err(at)?),
            ("Container", "Label") => {
                for word in split_words(&value).map_err(at)? {
                    let (k, v) = word.split_once('=').ok_or_else(|| at(format!("{word:?} is not name=value")))?;
                    svc.labels.insert(k.to_owned(), v.to_owned());
                }
            }
            ("Container", "WorkingDir") => svc.working_dir = Some(value),
            ("Container", "RunInit") => svc.run_init = parse_bool(&value).map_err(at)?,
            ("Container", "StopTimeout") => {
                svc.stop_timeout =
                    Some(value.parse().map_err(|_| at(format!("StopTimeout={value:?} is not a number of seconds")))?)
            }
            ("Container", "User") => svc.user = Some(value),
            ("Service", "Restart") => svc.restart = parse_restart(&value).map_err(at)?,
            ("Service", "TimeoutStartSec" | "TimeoutStopSec") => {}
            ("Install", "WantedBy" | "RequiredBy") => {}
            (s, k) => return Err(at(format!("{k}= in [{s}] is not supported (see docs/modules.md)"))),
        }
    }
    svc.image = image.filter(|i| !i.is_empty()).ok_or_else(|| format!("{name}.container has no Image="))?;
    Ok(svc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("TCP_PORT", "20001"), ("WEB_IMAGE", "127.0.0.1:5000/ns8rs/web:1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn a_full_service() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("environment"), "FROM_FILE=yes\n").unwrap();
        let text = "# a comment\n[Unit]\nDescription=Web server\nAfter=db.service\n\n[Container]\n\
                    Image=${WEB_IMAGE}\nExec=/bin/httpd -f \"-p\" '8080 x' \\\n  -h /www\n\
                    Environment=A=1 \"B=two words\"\nEnvironmentFile=environment\n\
                    PublishPort=127.0.0.1:${TCP_PORT}:8080\nPublishPort=9000:9000/udp\n\
                    Volume=data:/var/www:Z\nVolume=/srv/x:/x:ro\nLabel=a=b\n\
                    RunInit=true\nStopTimeout=3\n[Service]\nRestart=always\n[Install]\nWantedBy=default.target\n";
        let s = parse("web", text, &env(), dir.path()).unwrap();
        assert_eq!(s.image, "127.0.0.1:5000/ns8rs/web:1");
        assert_eq!(s.exec, ["/bin/httpd", "-f", "-p", "8080 x", "-h", "/www"]);
        assert_eq!(s.environment["B"], "two words");
        assert_eq!(s.environment["FROM_FILE"], "yes");
        assert_eq!(
            s.publish[0],
            Publish {
                host_ip: Some("127.0.0.1".into()),
                host_port: 20001,
                container_port: 8080,
                protocol: "tcp".into()
            }
        );
        assert_eq!(s.publish[1].protocol, "udp");
        assert_eq!(
            s.volumes[0],
            Volume::Named { name: "data".into(), dest: "/var/www".into(), options: vec!["Z".into()] }
        );
        assert!(matches!(&s.volumes[1], Volume::Bind { source, .. } if source == Path::new("/srv/x")));
        assert_eq!(s.restart, Restart::Always);
        assert!(s.run_init);
        assert_eq!(s.stop_timeout, Some(3));
        assert_eq!(s.container_name, "web");
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = |text: &str| parse("web", text, &env(), dir.path()).unwrap_err();
        assert!(err("[Container]\nImage=x\nPodmanArgs=--privileged\n").contains("line 3: PodmanArgs= in [Container]"));
        assert!(err("[Container]\nImage=${NOPE}\n").contains("${NOPE} is not set"));
        assert!(err("[Pod]\n").contains("[Pod] is not supported"));
        assert!(err("Image=x\n").contains("before any section"));
        assert!(err("[Container]\nExec=/bin/true\n").contains("has no Image="));
        assert!(err("[Container]\nImage=x\nPublishPort=80\n").contains("is not [ip:]host_port"));
        assert!(err("[Container]\nImage=x\nPublishPort=1.2.3:80:80\n").contains("not an IP"));
        assert!(err("[Container]\nImage=x\nVolume=../etc:/x\n").contains("neither a volume name"));
        assert!(err("[Container]\nImage=x\nVolume=v:/x:exec\n").contains("not one of"));
        assert!(err("[Container]\nImage=x\nExec=\"unclosed\n").contains("unclosed double quote"));
        assert!(err("[Service]\nRestart=sometimes\n").contains("Restart=\"sometimes\""));
        assert!(err("[Container]\nImage=x\nRunInit=maybe\n").contains("not a boolean"));
        assert!(parse("../x", "", &env(), dir.path()).unwrap_err().contains("not a service name"));
    }
}
