//! `oms plugin new`: a plugin project that builds, passes `oms plugin test` and can be
//! dropped into a plugins directory. Each template is one of the example plugins in
//! `plugins/examples/` (built and conformance-tested in CI), with its name replaced, plus the
//! contract's WIT and a `build.sh` that writes `dist/NAME.wasm` and `dist/NAME.toml`.

use std::path::{Path, PathBuf};

use oms_plugin_runtime::PluginKind;

/// The manifest's word for a kind.
fn word(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::PaymentProvider => "payment",
        PluginKind::InventoryAdapter => "inventory",
        PluginKind::NotificationFormatter => "notification",
    }
}

/// The function a README shows being called by hand.
fn example_function(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::PaymentProvider => "authorize",
        PluginKind::InventoryAdapter => "reserve",
        PluginKind::NotificationFormatter => "format",
    }
}

/// The languages `new` scaffolds (`--lang`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// Why no project was written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0:?} is not a plugin name: use 1 to 64 of a-z, 0-9 and '-', starting with a letter")]
    Name(String),
    #[error("{0} already exists; choose another name or directory")]
    Exists(PathBuf),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The contract, as the host reads it (the package's worlds and the WASI packages they use).
const WIT: &[(&str, &str)] = &[
    ("README.md", include_str!("../../../../wit/README.md")),
    ("types.wit", include_str!("../../../../wit/types.wit")),
    (
        "capabilities.wit",
        include_str!("../../../../wit/capabilities.wit"),
    ),
    ("payment.wit", include_str!("../../../../wit/payment.wit")),
    (
        "inventory.wit",
        include_str!("../../../../wit/inventory.wit"),
    ),
    (
        "notification.wit",
        include_str!("../../../../wit/notification.wit"),
    ),
    (
        "deps/cli/cli.wit",
        include_str!("../../../../wit/deps/cli/cli.wit"),
    ),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/http/http.wit",
        include_str!("../../../../wit/deps/http/http.wit"),
    ),
    (
        "deps/io/io.wit",
        include_str!("../../../../wit/deps/io/io.wit"),
    ),
    (
        "deps/random/random.wit",
        include_str!("../../../../wit/deps/random/random.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../../../wit/deps/sockets/sockets.wit"),
    ),
];

/// One example plugin: its files, the name they carry (replaced by the new plugin's), and
/// how to build it.
struct Template {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
    build: Build,
}

/// How a project's `build.sh` leaves the component at `dist/NAME.wasm`.
enum Build {
    Rust,
    /// componentize-py on `app.py`, for `world`.
    Python {
        world: &'static str,
    },
    /// componentize-js on `entry`, for `world`.
    Js {
        world: &'static str,
        entry: &'static str,
    },
}

impl Build {
    /// The commands, with `$name` the plugin's name.
    fn commands(&self) -> String {
        match self {
            Build::Rust => "rustup target add wasm32-wasip2\n\
                 cargo build --release --target wasm32-wasip2\n\
                 cp \"${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/${name//-/_}.wasm\" \"dist/$name.wasm\"\n"
                .to_owned(),
            Build::Python { world } => format!(
                "[ -x .venv/bin/componentize-py ] || {{\n\
                 \x20   python3 -m venv .venv\n\
                 \x20   .venv/bin/pip install --quiet componentize-py==0.25.1\n\
                 }}\n\
                 .venv/bin/componentize-py -d wit -w {world} componentize app -o \"dist/$name.wasm\"\n"
            ),
            Build::Js { world, entry } => format!(
                "npm ci --no-audit --no-fund\n\
                 npx componentize-js --wit wit --world-name {world} --disable http fetch-event \\\n\
                 \x20   --out \"dist/$name.wasm\" {entry}\n"
            ),
        }
    }

    /// What the build needs installed, for the README.
    fn needs(&self) -> &'static str {
        match self {
            Build::Rust => "a Rust toolchain (rustup), which adds the `wasm32-wasip2` target",
            Build::Python { .. } => {
                "Python 3.10 or later with venv and pip (componentize-py 0.25.1 is installed into .venv)"
            }
            Build::Js { .. } => {
                "Node.js 20 or later with npm (componentize-js is installed by `npm ci`)"
            }
        }
    }
}

const RUST_PAY: Template = Template {
    name: "rust-pay",
    files: &[
        (
            "Cargo.toml",
            include_str!("../../../../plugins/examples/rust-pay/Cargo.toml"),
        ),
        (
            "src/lib.rs",
            include_str!("../../../../plugins/examples/rust-pay/src/lib.rs"),
        ),
        (
            "manifest.toml",
            include_str!("../../../../plugins/examples/rust-pay/manifest.toml"),
        ),
    ],
    build: Build::Rust,
};

/// rust-pay's Cargo.toml: a project of its own (no workspace inheritance), which the other
/// Rust templates share with their name and description replaced.
const RUST_CARGO: &str = include_str!("../../../../plugins/examples/rust-pay/Cargo.toml");
/// The description line of [`RUST_CARGO`], replaced per kind.
const RUST_PAY_DESCRIPTION: &str =
    "description = \"Example payment provider: the contract's bookkeeping on the host's KV store\"";

/// The bundled `local-stock`, as a standalone project.
const RUST_INVENTORY: Template = Template {
    name: "local-stock",
    files: &[
        ("Cargo.toml", RUST_CARGO),
        (
            "src/lib.rs",
            include_str!("../../../../plugins/local-stock/src/lib.rs"),
        ),
        (
            "src/catalogue.rs",
            include_str!("../../../../plugins/local-stock/src/catalogue.rs"),
        ),
        (
            "src/reservations.rs",
            include_str!("../../../../plugins/local-stock/src/reservations.rs"),
        ),
        (
            "manifest.toml",
            include_str!("../../../../plugins/local-stock/manifest.toml"),
        ),
    ],
    build: Build::Rust,
};

/// The bundled `email-text`, as a standalone project.
const RUST_NOTIFICATION: Template = Template {
    name: "email-text",
    files: &[
        ("Cargo.toml", RUST_CARGO),
        (
            "src/lib.rs",
            include_str!("../../../../plugins/email-text/src/lib.rs"),
        ),
        (
            "src/money.rs",
            include_str!("../../../../plugins/email-text/src/money.rs"),
        ),
        (
            "src/template.rs",
            include_str!("../../../../plugins/email-text/src/template.rs"),
        ),
        (
            "manifest.toml",
            include_str!("../../../../plugins/email-text/manifest.toml"),
        ),
    ],
    build: Build::Rust,
};

const PYTHON_PAY: Template = Template {
    name: "python-pay",
    files: &[
        (
            "app.py",
            include_str!("../../../../plugins/examples/python-pay/app.py"),
        ),
        (
            "manifest.toml",
            include_str!("../../../../plugins/examples/python-pay/manifest.toml"),
        ),
    ],
    build: Build::Python {
        world: "payment-provider",
    },
};

const JS_PAY: Template = Template {
    name: "js-pay",
    files: &[
        (
            "pay.js",
            include_str!("../../../../plugins/examples/js-pay/pay.js"),
        ),
        (
            "package.json",
            include_str!("../../../../plugins/examples/js-pay/package.json"),
        ),
        (
            "package-lock.json",
            include_str!("../../../../plugins/examples/js-pay/package-lock.json"),
        ),
        (
            "manifest.toml",
            include_str!("../../../../plugins/examples/js-pay/manifest.toml"),
        ),
    ],
    build: Build::Js {
        world: "payment-provider",
        entry: "pay.js",
    },
};

const PYTHON_STOCK: Template = Template {
    name: "python-stock",
    files: &[
        (
            "app.py",
            include_str!("../../../../plugins/examples/python-stock/app.py"),
        ),
        (
            "manifest.toml",
            include_str!("../../../../plugins/examples/python-stock/manifest.toml"),
        ),
    ],
    build: Build::Python {
        world: "inventory-adapter",
    },
};

const PYTHON_NOTIFY: Template = Template {
    name: "python-notify",
    files: &[
        (
            "app.py",
            include_str!("../../../../plugins/examples/python-notify/app.py"),
        ),
        (
            "manifest.toml",
            include_str!("../../../../plugins/examples/python-notify/manifest.toml"),
        ),
    ],
    build: Build::Python {
        world: "notification-formatter",
    },
};

const JS_STOCK: Template = Template {
    name: "js-stock",
    files: &[
        (
            "stock.js",
            include_str!("../../../../plugins/examples/js-stock/stock.js"),
        ),
        (
            "package.json",
            include_str!("../../../../plugins/examples/js-stock/package.json"),
        ),
        (
            "package-lock.json",
            include_str!("../../../../plugins/examples/js-stock/package-lock.json"),
        ),
        (
            "manifest.toml",
            include_str!("../../../../plugins/examples/js-stock/manifest.toml"),
        ),
    ],
    build: Build::Js {
        world: "inventory-adapter",
        entry: "stock.js",
    },
};

const JS_NOTIFY: Template = Template {
    name: "js-notify",
    files: &[
        (
            "notify.js",
            include_str!("../../../../plugins/examples/js-notify/notify.js"),
        ),
        (
            "package.json",
            include_str!("../../../../plugins/examples/js-notify/package.json"),
        ),
        (
            "package-lock.json",
            include_str!("../../../../plugins/examples/js-notify/package-lock.json"),
        ),
        (
            "manifest.toml",
            include_str!("../../../../plugins/examples/js-notify/manifest.toml"),
        ),
    ],
    build: Build::Js {
        world: "notification-formatter",
        entry: "notify.js",
    },
};

fn template(kind: PluginKind, lang: Lang) -> &'static Template {
    match (kind, lang) {
        (PluginKind::PaymentProvider, Lang::Rust) => &RUST_PAY,
        (PluginKind::PaymentProvider, Lang::Python) => &PYTHON_PAY,
        (PluginKind::PaymentProvider, Lang::Js) => &JS_PAY,
        (PluginKind::InventoryAdapter, Lang::Rust) => &RUST_INVENTORY,
        (PluginKind::InventoryAdapter, Lang::Python) => &PYTHON_STOCK,
        (PluginKind::InventoryAdapter, Lang::Js) => &JS_STOCK,
        (PluginKind::NotificationFormatter, Lang::Rust) => &RUST_NOTIFICATION,
        (PluginKind::NotificationFormatter, Lang::Python) => &PYTHON_NOTIFY,
        (PluginKind::NotificationFormatter, Lang::Js) => &JS_NOTIFY,
    }
}

/// Whether `name` is a valid plugin name (the manifest's rule, and a directory name).
fn valid(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The project's build script: the language's build, then the manifest with the digest.
fn build_script(t: &Template, name: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n\
         # Builds dist/{name}.wasm and dist/{name}.toml (manifest.toml with the component's\n\
         # sha256 added): the two files a host's plugins directory takes.\n\
         set -euo pipefail\n\
         cd \"$(dirname \"${{BASH_SOURCE[0]}}\")\"\n\
         name={name}\n\
         mkdir -p dist\n\
         {build}\
         {{\n\
         \x20   echo \"# Generated by build.sh from manifest.toml; edit that file instead.\"\n\
         \x20   echo \"sha256 = \\\"$(sha256sum \"dist/$name.wasm\" | cut -d' ' -f1)\\\"\"\n\
         \x20   cat manifest.toml\n\
         }} >\"dist/$name.toml\"\n\
         echo \"built dist/$name.wasm; next: oms plugin test dist/$name.wasm\"\n",
        build = t.build.commands()
    )
}

fn readme(t: &Template, name: &str, kind: PluginKind) -> String {
    let function = example_function(kind);
    let input = super::example(function);
    let usage = match kind {
        PluginKind::PaymentProvider => format!(
            "An order names the payment plugin: `CreateOrder` with `payment.provider = \"{name}\"`."
        ),
        PluginKind::InventoryAdapter => format!(
            "The host uses one inventory adapter: `plugins.inventory = \"{name}\"` in its configuration."
        ),
        PluginKind::NotificationFormatter => format!(
            "The notification consumer runs the formatters `broker.notifications.formatters` names: add `\"{name}\"` to it."
        ),
    };
    let kind = word(kind);
    format!(
        "# {name}\n\n\
         A {kind} plugin for the OMS host, scaffolded by `oms plugin new` from the example\n\
         `{example}`. The contract is in `wit/` (what each function must do is in its comments);\n\
         the host's guide is `docs/plugins.md` in the OMS repository.\n\n\
         ## Build, test, install\n\n\
         Needs {needs}.\n\n\
         ```sh\n\
         ./build.sh                          # dist/{name}.wasm and dist/{name}.toml\n\
         oms plugin test dist/{name}.wasm    # the load checks and the conformance suite\n\
         cp dist/{name}.wasm dist/{name}.toml /path/to/the/hosts/plugins/   # the host loads it within a second\n\
         ```\n\n\
         Call one function by hand, with what the plugin logs and prints on stderr:\n\n\
         ```sh\n\
         oms plugin run dist/{name}.wasm {function} --input '{input}'\n\
         ```\n\n\
         {usage}\n",
        example = t.name,
        needs = t.build.needs(),
    )
}

/// Writes a new `kind` plugin project in `lang` named `name` into `parent/name`, and returns
/// its directory. Refuses an existing directory.
pub fn new_project(
    parent: &Path,
    name: &str,
    kind: PluginKind,
    lang: Lang,
) -> Result<PathBuf, ScaffoldError> {
    if !valid(name) {
        return Err(ScaffoldError::Name(name.to_owned()));
    }
    let t = template(kind, lang);
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let write = |relative: &str, content: &str| {
        let path = dir.join(relative);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, content));
        written.map_err(|source| ScaffoldError::Write { path, source })
    };
    let description = format!("description = \"An OMS {} plugin\"", word(kind));
    for (relative, content) in t.files {
        // The templates' paths to the repository's WIT become the project's own `wit/`, and
        // their names (the shared Cargo.toml's too) the new plugin's.
        let content = content
            .replace("../../../wit", "wit")
            .replace("\"../../wit\"", "\"wit\"")
            .replace(RUST_PAY_DESCRIPTION, &description)
            .replace(RUST_PAY.name, name)
            .replace(t.name, name)
            .replace(&t.name.replace('-', "_"), &name.replace('-', "_"));
        write(relative, &content)?;
    }
    for (relative, content) in WIT {
        write(&format!("wit/{relative}"), content)?;
    }
    write("README.md", &readme(t, name, kind))?;
    write("build.sh", &build_script(t, name))?;
    write(".gitignore", "dist/\ntarget/\n.venv/\nnode_modules/\n")?;
    set_executable(&dir.join("build.sh"))?;
    Ok(dir)
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<(), ScaffoldError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        ScaffoldError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> Result<(), ScaffoldError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_manifest_rule() {
        for ok in ["acme-pay", "a", "pay2"] {
            assert!(valid(ok), "{ok}");
        }
        for bad in ["", "Acme", "2pay", "acme_pay", "../x", &"a".repeat(65)] {
            assert!(!valid(bad), "{bad}");
        }
    }

    #[test]
    fn a_project_carries_its_name_everywhere_and_the_contract() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = new_project(
            parent.path(),
            "acme-pay",
            PluginKind::PaymentProvider,
            Lang::Rust,
        )
        .expect("scaffold");
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).expect(p);
        assert!(read("manifest.toml").contains("name = \"acme-pay\""));
        assert!(read("Cargo.toml").contains("name = \"acme-pay\""));
        assert!(read("src/lib.rs").contains("path: \"wit\""));
        assert!(!read("src/lib.rs").contains("rust-pay"));
        assert!(
            read("build.sh").contains("acme_pay.wasm") || read("build.sh").contains("${name//-/_}")
        );
        assert_eq!(
            read("wit/payment.wit"),
            include_str!("../../../../wit/payment.wit")
        );
        assert!(matches!(
            new_project(
                parent.path(),
                "acme-pay",
                PluginKind::PaymentProvider,
                Lang::Rust
            ),
            Err(ScaffoldError::Exists(_))
        ));
    }
}
