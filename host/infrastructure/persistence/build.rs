//! `sqlx::migrate!` embeds the migration files at compile time; a migration *added* to the
//! folders would not otherwise trigger a rebuild.

fn main() {
    println!("cargo:rerun-if-changed=../../../migrations");
}
