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

/// Why a `.container` file is refused.
#[derive(Debug, thiserror::Error)]
pub enum QuadletError {
    #[error("{0:?} is not a service name (letters, digits, - _ .)")]
    NotAName(String),
    /// A line is wrong: the file and line number lead the message.
    #[error("{name}.container line {line}: {error}")]
    Line { name: String, line: usize, error: LineError },
    #[error("{0}.container has no Image=")]
    NoImage(String),
}

/// What is wrong on one line of a `.container` file (or in one value).
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("unclosed \"${{\" in {0:?}")]
    UnclosedVariable(String),
    #[error("${{{0}}} is not set in the module's environment")]
    UnsetVariable(String),
    #[error("unclosed {quote} quote in {line:?}")]
    UnclosedQuote { quote: &'static str, line: String },
    #[error("dangling backslash in {0:?}")]
    DanglingBackslash(String),
    #[error("{what} port {value:?} is not a port number")]
    Port { what: &'static str, value: String },
    #[error("protocol {0:?} is not tcp or udp")]
    Protocol(String),
    #[error("bad address in {0:?}")]
    BracketedAddress(String),
    #[error("{0:?} is not [ip:]host_port:container_port[/protocol]")]
    PublishShape(String),
    #[error("{0:?} is not an IP address")]
    NotAnIp(String),
    #[error("{0:?} lacks host_port:container_port")]
    NoPorts(String),
    #[error("{0:?} is not source:destination[:options]")]
    VolumeShape(String),
    #[error("{0:?} has too many ':'")]
    VolumeColons(String),
    #[error("volume destination {0:?} is not an absolute path")]
    VolumeDest(String),
    #[error("volume option {0:?} is not one of ro, rw, z, Z, U")]
    VolumeOption(String),
    #[error("volume source {0:?} is neither a volume name nor an absolute path")]
    VolumeSource(String),
    #[error("{0:?} is not a boolean (true or false)")]
    NotABool(String),
    #[error("Network={0:?}: expected host or private")]
    Network(String),
    #[error("Restart={0:?}: expected no, on-failure or always")]
    Restart(String),
    #[error("bad section header {0:?}")]
    SectionHeader(String),
    #[error("section [{0}] is not supported (Unit, Container, Service, Install)")]
    Section(String),
    #[error("{0:?} is not Key=Value")]
    NotKeyValue(String),
    #[error("{0}= comes before any section")]
    BeforeSection(String),
    #[error("ContainerName={0:?} is not a container name")]
    ContainerName(String),
    #[error("{word:?} is not {shape}")]
    Assignment { word: String, shape: &'static str },
    #[error("EnvironmentFile {path}: {source}")]
    EnvironmentFile { path: PathBuf, source: std::io::Error },
    #[error("StopTimeout={0:?} is not a number of seconds")]
    StopTimeout(String),
    #[error("{key}= in [{section}] is not supported (see docs/modules.md)")]
    Unsupported { section: String, key: String },
}

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
    /// `Network=host`: the host's network namespace (an edge proxy that must reach
    /// every module's loopback port). It gives the container no more than the module's
    /// own steps have: they run on the host as its user.
    pub host_network: bool,
}

/// Whether `name` may name a service (and so a container).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Replace `${NAME}` with its value; an unknown name or an unclosed `${` is an error.
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> Result<String, LineError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| LineError::UnclosedVariable(text.to_owned()))?;
        let name = &after[..end];
        let value = env.get(name).ok_or_else(|| LineError::UnsetVariable(name.to_owned()))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Split a command line as systemd does for `Exec=`: whitespace separates words,
/// single and double quotes group, backslash escapes inside double quotes and outside.
pub fn split_words(line: &str) -> Result<Vec<String>, LineError> {
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
                        None => return Err(LineError::UnclosedQuote { quote: "single", line: line.to_owned() }),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => {
                            cur.push(chars.next().ok_or_else(|| LineError::DanglingBackslash(line.to_owned()))?)
                        }
                        Some(c) => cur.push(c),
                        None => return Err(LineError::UnclosedQuote { quote: "double", line: line.to_owned() }),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next().ok_or_else(|| LineError::DanglingBackslash(line.to_owned()))?);
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

fn parse_port(s: &str, what: &'static str) -> Result<u16, LineError> {
    s.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| LineError::Port { what, value: s.to_owned() })
}

fn parse_publish(v: &str) -> Result<Publish, LineError> {
    let (spec, protocol) = match v.rsplit_once('/') {
        Some((s, p)) if matches!(p, "tcp" | "udp") => (s, p.to_owned()),
        Some((_, p)) => return Err(LineError::Protocol(p.to_owned())),
        None => (v, "tcp".to_owned()),
    };
    // An IPv6 host address is bracketed: [::1]:8080:80.
    let (host_ip, ports) = if let Some(rest) = spec.strip_prefix('[') {
        let (ip, rest) = rest.split_once("]:").ok_or_else(|| LineError::BracketedAddress(v.to_owned()))?;
        (Some(ip.to_owned()), rest)
    } else {
        match spec.matches(':').count() {
            1 => (None, spec),
            2 => {
                let (ip, rest) = spec.split_once(':').expect("two colons");
                ((!ip.is_empty()).then(|| ip.to_owned()), rest)
            }
            _ => return Err(LineError::PublishShape(v.to_owned())),
        }
    };
    if let Some(ip) = &host_ip {
        ip.parse::<std::net::IpAddr>().map_err(|_| LineError::NotAnIp(ip.clone()))?;
    }
    let (host, container) = ports.split_once(':').ok_or_else(|| LineError::NoPorts(v.to_owned()))?;
    Ok(Publish {
        host_ip,
        host_port: parse_port(host, "host")?,
        container_port: parse_port(container, "container")?,
        protocol,
    })
}

fn parse_volume(v: &str) -> Result<Volume, LineError> {
    let mut parts = v.split(':');
    let (Some(source), Some(dest)) = (parts.next(), parts.next()) else {
        return Err(LineError::VolumeShape(v.to_owned()));
    };
    let options: Vec<String> = parts.next().map(|o| o.split(',').map(str::to_owned).collect()).unwrap_or_default();
    if parts.next().is_some() {
        return Err(LineError::VolumeColons(v.to_owned()));
    }
    if !dest.starts_with('/') {
        return Err(LineError::VolumeDest(dest.to_owned()));
    }
    if let Some(o) = options.iter().find(|o| !matches!(o.as_str(), "ro" | "rw" | "z" | "Z" | "U")) {
        return Err(LineError::VolumeOption(o.clone()));
    }
    if source.starts_with('/') {
        Ok(Volume::Bind { source: PathBuf::from(source), dest: dest.to_owned(), options })
    } else if valid_name(source) {
        Ok(Volume::Named { name: source.to_owned(), dest: dest.to_owned(), options })
    } else {
        Err(LineError::VolumeSource(source.to_owned()))
    }
}

fn parse_bool(v: &str) -> Result<bool, LineError> {
    match v {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(LineError::NotABool(v.to_owned())),
    }
}

fn parse_restart(v: &str) -> Result<Restart, LineError> {
    match v {
        "no" => Ok(Restart::No),
        "on-failure" => Ok(Restart::OnFailure),
        "always" => Ok(Restart::Always),
        _ => Err(LineError::Restart(v.to_owned())),
    }
}

/// Parse the text of `<name>.container`. `env` expands `${NAME}`; relative
/// `EnvironmentFile=` paths are read from `state_dir`.
pub fn parse(
    name: &str,
    text: &str,
    env: &BTreeMap<String, String>,
    state_dir: &Path,
) -> Result<Service, QuadletError> {
    if !valid_name(name) {
        return Err(QuadletError::NotAName(name.to_owned()));
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
        let at = |error: LineError| QuadletError::Line { name: name.to_owned(), line: n, error };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[') {
            section = s.strip_suffix(']').ok_or_else(|| at(LineError::SectionHeader(line.to_owned())))?.to_owned();
            if !matches!(section.as_str(), "Unit" | "Container" | "Service" | "Install") {
                return Err(at(LineError::Section(section)));
            }
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| at(LineError::NotKeyValue(line.to_owned())))?;
        let (key, raw_value) = (key.trim(), value.trim());
        let value = expand(raw_value, env).map_err(at)?;
        match (section.as_str(), key) {
            ("", _) => return Err(at(LineError::BeforeSection(key.to_owned()))),
            ("Unit", "Description") => svc.description = Some(value),
            // Ordering among a module's services: all start together here.
            ("Unit", "After" | "Before" | "Requires" | "Wants" | "Documentation") => {}
            ("Container", "Image") => image = Some(value),
            ("Container", "Exec") => svc.exec = split_words(&value).map_err(at)?,
            ("Container", "ContainerName") => {
                if !valid_name(&value) {
                    return Err(at(LineError::ContainerName(value)));
                }
                svc.container_name = value;
            }
            ("Container", "Environment") => {
                for word in split_words(&value).map_err(at)? {
                    let (k, v) = word
                        .split_once('=')
                        .ok_or_else(|| at(LineError::Assignment { word: word.clone(), shape: "NAME=value" }))?;
                    svc.environment.insert(k.to_owned(), v.to_owned());
                }
            }
            ("Container", "EnvironmentFile") => {
                let path = state_dir.join(&value);
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| at(LineError::EnvironmentFile { path: path.clone(), source }))?;
                svc.environment.extend(protocol::envfile::parse(&text));
            }
            ("Container", "PublishPort") => svc.publish.push(parse_publish(&value).map_err(at)?),
            ("Container", "Volume") => svc.volumes.push(parse_volume(&value).map_err(at)?),
            ("Container", "Label") => {
                for word in split_words(&value).map_err(at)? {
                    let (k, v) = word
                        .split_once('=')
                        .ok_or_else(|| at(LineError::Assignment { word: word.clone(), shape: "name=value" }))?;
                    svc.labels.insert(k.to_owned(), v.to_owned());
                }
            }
            ("Container", "WorkingDir") => svc.working_dir = Some(value),
            ("Container", "RunInit") => svc.run_init = parse_bool(&value).map_err(at)?,
            ("Container", "StopTimeout") => {
                svc.stop_timeout = Some(value.parse().map_err(|_| at(LineError::StopTimeout(value.clone())))?)
            }
            ("Container", "User") => svc.user = Some(value),
            ("Container", "Network") => {
                svc.host_network = match value.as_str() {
                    "host" => true,
                    "private" | "slirp4netns" => false,
                    _ => return Err(at(LineError::Network(value.clone()))),
                }
            }
            ("Service", "Restart") => svc.restart = parse_restart(&value).map_err(at)?,
            ("Service", "TimeoutStartSec" | "TimeoutStopSec") => {}
            ("Install", "WantedBy" | "RequiredBy") => {}
            (s, k) => {
                return Err(at(LineError::Unsupported { section: s.to_owned(), key: k.to_owned() }));
            }
        }
    }
    svc.image = image.filter(|i| !i.is_empty()).ok_or_else(|| QuadletError::NoImage(name.to_owned()))?;
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
    fn network_host_or_private_only() {
        let dir = tempfile::tempdir().unwrap();
        let svc = |net: &str| parse("p", &format!("[Container]\nImage=x\nNetwork={net}\n"), &env(), dir.path());
        assert!(svc("host").unwrap().host_network);
        assert!(!svc("private").unwrap().host_network);
        let e = svc("container:other").unwrap_err().to_string();
        assert!(e.contains("Network=\"container:other\""), "{e}");
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
        let err = |text: &str| parse("web", text, &env(), dir.path()).unwrap_err().to_string();
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
        assert!(parse("../x", "", &env(), dir.path()).unwrap_err().to_string().contains("not a service name"));
    }
}
