//! Saves configs through camgate's config store in a loop, printing
//! `saved N` after each save returns; the crash test SIGKILLs it at random
//! points. Save N writes [`camgate_tests::saver_config`]`(N)`.
//!
//! Usage: `config-saver PATH FIRST`

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: config-saver PATH FIRST");
    let first: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("usage: config-saver PATH FIRST");
    let store = camgate::config::store::ConfigStore::new(path, camgate::config::Overrides::default());
    for n in first.. {
        store.save(&camgate_tests::saver_config(n)).expect("save");
        println!("saved {n}");
    }
}
