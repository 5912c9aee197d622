//! Ferry IPAM (stub; being implemented).
