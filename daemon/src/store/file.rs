//! The embedded file store (being implemented).
