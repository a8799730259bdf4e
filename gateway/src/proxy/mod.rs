//! The reverse proxy in front of the DVR. Pure decision logic (canonical
//! paths, rules, profiles) is kept apart from I/O so it can be unit- and
//! fuzz-tested and explained (`camgate explain`) by the very code that
//! enforces it.

pub mod evaluate;
pub mod path;
pub mod profiles;
pub mod rules;
