//! The etcd v3 store (being implemented).
