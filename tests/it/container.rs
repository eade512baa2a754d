//! The container obeys its configuration: the image's environment sets no
//! setting a config file might want, the baked-in file is the defaults, and
//! a file the operator gives (`DRAWBRIDGE_CONFIG` or `--config`) is obeyed
//! by `run`'s database and by `healthcheck` alike.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Output};

use drawbridge::config::{LogFormat, Settings, Sources};

const DOCKERFILE: &str = include_str!("../../Dockerfile");
const BAKED: &str = "/etc/drawbridge/drawbridge.toml";

/// The runtime stage's `ENV` variables (continuation lines joined).
fn image_env() -> BTreeMap<String, String> {
    let runtime = &DOCKERFILE[DOCKERFILE.rfind("\nFROM ").expect("a runtime stage")..];
    let joined = runtime.replace("\\\n", " ");
    let mut env = BTreeMap::new();
    for line in joined.lines().filter_map(|l| l.trim().strip_prefix("ENV ")) {
        for pair in line.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    env
}

/// Runs the binary with exactly the image's environment plus `extra`.
fn in_image_env(args: &[&str], extra: &[(&str, &str)], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(args)
        .env_clear()
        .envs(image_env())
        .envs(extra.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_image_sets_no_setting_only_the_path_of_its_config_file() {
    let env = image_env();
    let settings: Vec<&String> = env
        .keys()
        .filter(|k| k.starts_with("DRAWBRIDGE__"))
        .collect();
    assert!(
        settings.is_empty(),
        "the image overrides config files: {settings:?}"
    );
    assert_eq!(
        env.get("DRAWBRIDGE_CONFIG").map(String::as_str),
        Some(BAKED)
    );
    assert!(
        DOCKERFILE.contains(&format!("COPY config/container.toml {BAKED}")),
        "the baked file is config/container.toml"
    );
}

#[test]
fn the_baked_config_file_holds_the_container_defaults() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/container.toml");
    let settings = Settings::load(&Sources::new(Some(&file))).expect("it loads");
    assert_eq!(settings.database.url, "sqlite:///data/drawbridge.db");
    assert_eq!(settings.logging.format, LogFormat::Json);
    assert_eq!(settings.ops.listen.to_string(), "0.0.0.0:9090");
    assert_eq!(settings.http.listen.to_string(), "0.0.0.0:8080");
}

#[test]
fn a_config_file_that_sets_database_url_is_honoured_in_the_image_environment() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let by_env = dir.path().join("by-env.db");
    let by_flag = dir.path().join("by-flag.db");
    let write = |name: &str, db: &Path| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("[database]\nurl = \"sqlite://{}\"\n", db.display()),
        )
        .unwrap();
        path
    };
    let env_file = write("env.toml", &by_env);
    let flag_file = write("flag.toml", &by_flag);

    // Act: the operator's file named by DRAWBRIDGE_CONFIG, then by --config
    // (the image's DRAWBRIDGE_CONFIG names a file this host lacks).
    let named = in_image_env(
        &["migrate"],
        &[("DRAWBRIDGE_CONFIG", env_file.to_str().unwrap())],
        dir.path(),
    );
    let flagged = in_image_env(
        &["--config", flag_file.to_str().unwrap(), "migrate"],
        &[],
        dir.path(),
    );

    // Assert
    assert!(named.status.success(), "{}", text(&named));
    assert!(flagged.status.success(), "{}", text(&flagged));
    assert!(
        by_env.is_file(),
        "DRAWBRIDGE_CONFIG's database.url was used"
    );
    assert!(by_flag.is_file(), "--config's database.url was used");
}

/// A one-shot HTTP server answering `/healthz` with 200; returns its port.
fn healthz_once() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buf = [0_u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    port
}

#[test]
fn healthcheck_probes_the_address_of_the_same_config_file() {
    // Arrange: ops.listen in the file, on a port only the test serves.
    let dir = tempfile::tempdir().unwrap();
    let port = healthz_once();
    let file = dir.path().join("ops.toml");
    std::fs::write(&file, format!("[ops]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();

    // Act
    let out = in_image_env(
        &["healthcheck"],
        &[("DRAWBRIDGE_CONFIG", file.to_str().unwrap())],
        dir.path(),
    );

    // Assert
    assert!(out.status.success(), "{}", text(&out));
}
