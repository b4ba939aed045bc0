//! `oms-componentize`: the few `wasm-tools` operations the plugin build needs, so the build
//! works offline without installing `wasm-tools`.
//!
//! ```text
//! oms-componentize new CORE.wasm -o OUT.wasm   # core module (with embedded WIT) -> component
//! oms-componentize wit COMPONENT.wasm          # print the component's world
//! oms-componentize imports COMPONENT.wasm      # one imported interface per line
//! oms-componentize check-wit DIR               # parse a WIT package and list its worlds
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use wit_component::{ComponentEncoder, DecodedWasm, WitPrinter};
use wit_parser::{Resolve, WorldItem};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, input, flag, output] if cmd == "new" && flag == "-o" => {
            new_component(Path::new(input), Path::new(output))
        }
        [cmd, input] if cmd == "wit" => print_wit(Path::new(input)),
        [cmd, input] if cmd == "imports" => print_imports(Path::new(input)),
        [cmd, dir] if cmd == "check-wit" => check_wit(Path::new(dir)),
        _ => bail!(
            "usage: oms-componentize new CORE.wasm -o OUT.wasm | wit FILE.wasm | imports FILE.wasm | check-wit DIR"
        ),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// wit-bindgen embeds the world in a custom section of the core module; the encoder reads it
/// back to type the component's imports and exports. No WASI adapter is given on purpose: a
/// module that imports anything outside the world is refused instead of silently gaining WASI.
fn new_component(input: &Path, output: &Path) -> Result<()> {
    let module = read(input)?;
    let component = ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .with_context(|| format!("{} is not a wit-bindgen core module", input.display()))?
        .encode()
        .with_context(|| format!("encoding {} as a component", input.display()))?;
    let tmp = PathBuf::from(format!("{}.tmp", output.display()));
    std::fs::write(&tmp, component).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))
}

fn decode_component(path: &Path) -> Result<(Resolve, wit_parser::WorldId)> {
    match wit_component::decode(&read(path)?)
        .with_context(|| format!("decoding {}", path.display()))?
    {
        DecodedWasm::Component(resolve, world) => Ok((resolve, world)),
        DecodedWasm::WitPackage(..) => {
            bail!("{} is a WIT package, not a component", path.display())
        }
    }
}

fn print_wit(path: &Path) -> Result<()> {
    let (resolve, world) = decode_component(path)?;
    let package = resolve.worlds[world]
        .package
        .context("decoded world has no package")?;
    let mut printer = WitPrinter::default();
    printer.print(&resolve, package, &[])?;
    println!("{}", printer.output);
    Ok(())
}

fn print_imports(path: &Path) -> Result<()> {
    let (resolve, world) = decode_component(path)?;
    for (key, item) in &resolve.worlds[world].imports {
        if let WorldItem::Interface { .. } = item {
            println!("{}", resolve.name_world_key(key));
        }
    }
    Ok(())
}

fn check_wit(dir: &Path) -> Result<()> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(dir)
        .with_context(|| format!("parsing WIT in {}", dir.display()))?;
    let package = &resolve.packages[package];
    println!("package {}", package.name);
    for (name, world) in &package.worlds {
        let world = &resolve.worlds[*world];
        let mut exports: Vec<String> = world
            .exports
            .keys()
            .map(|key| resolve.name_world_key(key))
            .collect();
        exports.sort();
        println!(
            "  world {name}: {} imports, exports [{}]",
            world.imports.len(),
            exports.join(", ")
        );
    }
    Ok(())
}
