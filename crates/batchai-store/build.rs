//! `sqlx::migrate!` embeds the migrations at compile time; a new migration file alone must
//! rebuild the crate, or a binary would ship without it.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
