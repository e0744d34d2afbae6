use super::*;

fn fake_bin_dir(root: &Path, name: &str, with: &[&str]) -> PathBuf {
    let dir = root.join(name).join("bin");
    fs::create_dir_all(&dir).expect("mkdir");
    for exe in with {
        let path = dir.join(exe);
        fs::write(&path, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "actor-orm-unit-{name}-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn no_binaries_is_one_clear_error() {
    let root = scratch("none");
    let only_initdb = fake_bin_dir(&root, "half", &["initdb"]);
    let paths = SearchPaths {
        path: vec![only_initdb],
        pg_config_bindir: None,
        versioned_roots: vec![],
    };
    let err = find_server_binaries(&paths).expect_err("nothing usable");
    assert!(matches!(err, TestingError::BinariesNotFound));
    let msg = err.to_string();
    assert!(msg.contains("apt-get install postgresql"), "{msg}");
    assert!(msg.contains("DATABASE_URL"), "{msg}");
    let _ = fs::remove_dir_all(root);
}

#[test]
fn newest_versioned_install_wins_after_path() {
    let root = scratch("versions");
    fake_bin_dir(&root, "9.6", &["initdb", "postgres"]);
    fake_bin_dir(&root, "16", &["initdb", "postgres"]);
    fake_bin_dir(&root, "15", &["initdb", "postgres"]);
    let paths = SearchPaths {
        path: vec![root.join("nowhere")],
        pg_config_bindir: None,
        versioned_roots: vec![root.join("9.6"), root.join("16"), root.join("15")],
    };
    let found = find_server_binaries(&paths).expect("found");
    assert!(found.initdb.ends_with("16/bin/initdb"), "{found:?}");

    let on_path = fake_bin_dir(&root, "onpath", &["initdb", "postgres"]);
    let paths = SearchPaths {
        path: vec![on_path.clone()],
        ..paths
    };
    assert_eq!(
        find_server_binaries(&paths).expect("found").postgres,
        on_path.join("postgres")
    );
    let _ = fs::remove_dir_all(root);
}

#[test]
fn database_names_are_safe_identifiers_and_unique() {
    let a = database_name("Weird \"name\"; DROP DATABASE x --");
    let b = database_name("Weird \"name\"; DROP DATABASE x --");
    assert_ne!(a, b);
    for name in [&a, &b] {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
        assert!(name.len() < 63, "{name}");
    }
}

#[test]
fn owner_records_tell_live_processes_from_dead_ones() {
    let me = owner_record(std::process::id()).expect("own stat");
    assert!(owner_alive(&me));
    // Same pid, different start time: a reused pid, not the owner.
    let reused = format!("{} 1", std::process::id());
    assert!(!owner_alive(&reused));
    assert!(!owner_alive("garbage"));
    assert!(!owner_alive(""));
}
