//! The vxlan backend's node side: the VXLAN device Ferry owns (`ferry.<VNI>`) and what a lease
//! carries so peers can reach this node through it (flannel's vxlan `BackendData`).
//!
//! Why VXLAN and not IP-in-IP: it is the encapsulation the kernel always has (the lab and many
//! cloud kernels ship no `ipip`/`gre`/`geneve` modules), it is UDP (passes firewalls and cloud
//! security groups that drop IP protocol 4; the source port carries the inner flow's hash, so
//! the underlay's ECMP and the receiver's RSS spread flows), NICs offload its checksums and
//! segmentation, and it is flannel's vxlan backend exactly (`VtepMAC` in `BackendData`,
//! `DirectRouting`), so flanneld nodes in the same store interoperate. It costs 50 bytes of
//! header (IP-in-IP: 20) and one neighbour + one fdb entry per encapsulated peer.
//!
//! Per encapsulated peer, as flannel's vxlan backend programs it: a route `subnet via
//! <subnet's network address> dev ferry.N onlink`, a permanent ARP entry for that address with
//! the peer's `VtepMAC`, and a permanent fdb entry sending frames for that MAC to the peer's
//! public IP (see [`crate::route_applier`]).

use crate::config::VxlanConf;
use ferry_netlink::link::Vxlan;
use ferry_netlink::{mac_to_string, sysctl, Netlink};
use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::{json, Value};
use std::io;
use std::net::Ipv4Addr;

/// The device name for `vni` (`ferry.1`), like flannel's `flannel.1`.
pub fn device_name(vni: u32) -> String {
    format!("ferry.{vni}")
}

/// Whether `name` is a device name this module gives (for uninstall).
pub fn is_device_name(name: &str) -> bool {
    name.strip_prefix("ferry.")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// This node's VTEP MAC: fixed by its public IP (`0e:66:` + the address), so it survives
/// restarts and device re-creation without a store round trip. Locally administered, unicast.
pub fn vtep_mac(public_ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = public_ip.octets();
    [0x0e, 0x66, a, b, c, d]
}

/// The VTEP address of a node subnet: its network address (flannel's choice), used as the
/// gateway of the encapsulated route and as the device's own address on this node.
pub fn vtep_ip(subnet: Ipv4Network) -> Ipv4Addr {
    subnet.network()
}

/// flannel's vxlan lease `BackendData`.
pub fn backend_data(vni: u32, mac: [u8; 6]) -> Value {
    json!({ "VNI": vni, "VtepMAC": mac_to_string(mac) })
}

/// The VTEP MAC a peer's vxlan `BackendData` names, if it can be sent VXLAN on `vni`: the
/// same VNI and a unicast, non-zero MAC. The error says why not.
pub fn peer_vtep(data: &Value, vni: u32) -> Result<[u8; 6], String> {
    let their = data.get("VNI").and_then(Value::as_u64);
    if their.is_some_and(|v| v != u64::from(vni)) {
        return Err(format!(
            "BackendData VNI {} is not this cluster's VNI {vni}",
            their.unwrap_or(0)
        ));
    }
    let Some(s) = data.get("VtepMAC").and_then(Value::as_str) else {
        return Err("BackendData has no VtepMAC".into());
    };
    let mac = parse_mac(s).ok_or_else(|| format!("VtepMAC {s:?} is not a MAC address"))?;
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(format!("VtepMAC {s} is not a unicast address"));
    }
    Ok(mac)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The device this node wants: settings from the config, the uplink and the node's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub vxlan: Vxlan,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// This node's VTEP address (its subnet's network address), as a /32 on the device.
    pub addr: Ipv4Addr,
}

impl Device {
    pub fn new(
        conf: VxlanConf,
        public_ip: Ipv4Addr,
        uplink: u32,
        mtu: u32,
        subnet: Ipv4Network,
    ) -> Device {
        Device {
            name: device_name(conf.vni),
            vxlan: Vxlan {
                vni: conf.vni,
                port: conf.port,
                local: public_ip,
                uplink,
                learning: false,
            },
            mtu,
            mac: vtep_mac(public_ip),
            addr: vtep_ip(subnet),
        }
    }

    /// Make the device exist as wanted (re-created when its VXLAN settings or MAC differ, MTU
    /// and state fixed in place), with its address and sysctls. Returns its ifindex and
    /// whether anything changed.
    pub fn ensure(&self, nl: &mut Netlink) -> io::Result<(u32, bool)> {
        let mut changed = false;
        let link = match nl.vxlan_by_name(&self.name)? {
            Some((l, Some(v))) if v == self.vxlan && l.mac == Some(self.mac) => l,
            Some((l, found)) => {
                warn!(
                    "device {} is not as wanted ({}); re-creating it",
                    self.name,
                    match found {
                        None => format!("a {} device", l.kind.as_deref().unwrap_or("non-VXLAN")),
                        Some(v) => format!("{v:?}, MAC {:?}", l.mac.map(mac_to_string)),
                    }
                );
                nl.del_link(l.index)?;
                self.create(nl)?
            }
            None => self.create(nl)?,
        };
        if link.mtu != self.mtu {
            info!("device {}: MTU {} -> {}", self.name, link.mtu, self.mtu);
            nl.set_mtu(link.index, self.mtu)?;
            changed = true;
        }
        if !link.up {
            nl.set_up(link.index)?;
            changed = true;
        }
        let have = nl.addresses(Some(link.index))?;
        let want = IpNetwork::V4(Ipv4Network::new(self.addr, 32).expect("/32"));
        for (_, a) in have.iter().filter(|(_, a)| a.is_ipv4() && *a != want) {
            nl.del_address(link.index, *a)?;
            changed = true;
        }
        if !have.iter().any(|(_, a)| *a == want) {
            match nl.add_address(link.index, want, false) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => changed = true,
            }
        }
        // Loose reverse-path filtering: a peer may send encapsulated traffic that this node
        // routes back directly (a flanneld node without DirectRouting, a peer that sees the
        // underlay differently); forwarding for pod traffic through the device.
        for (key, value) in [("rp_filter", "2"), ("forwarding", "1")] {
            sysctl::set(&format!("net/ipv4/conf/{}/{key}", self.name), value)?;
        }
        Ok((link.index, changed))
    }

    fn create(&self, nl: &mut Netlink) -> io::Result<ferry_netlink::Link> {
        info!(
            "device {}: creating VXLAN VNI {} port {} local {} MAC {}",
            self.name,
            self.vxlan.vni,
            self.vxlan.port,
            self.vxlan.local,
            mac_to_string(self.mac)
        );
        nl.create_vxlan(&self.name, &self.vxlan, self.mtu, self.mac)?;
        nl.link_by_name(&self.name)?.ok_or_else(|| {
            io::Error::other(format!("device {} vanished after creation", self.name))
        })
    }
}

/// The device at run time: kept as wanted before every full reconcile.
pub struct Overlay {
    pub device: Device,
    pub direct_routing: bool,
    netlink: Netlink,
}

impl Overlay {
    pub fn new(device: Device, direct_routing: bool) -> io::Result<Overlay> {
        Ok(Overlay { device, direct_routing, netlink: Netlink::new()? })
    }

    /// The node's public IP changed: the device's local address and VTEP MAC follow (the next
    /// [`Overlay::ensure`] re-creates it).
    pub fn readdress(&mut self, public_ip: Ipv4Addr) {
        self.device.vxlan.local = public_ip;
        self.device.mac = vtep_mac(public_ip);
    }

    /// [`Device::ensure`] on this daemon's netlink socket.
    pub fn ensure(&mut self) -> io::Result<(u32, bool)> {
        self.device.ensure(&mut self.netlink)
    }
}

/// Remove every VXLAN device Ferry made (uninstall, or the cluster left the vxlan backend):
/// its routes, nexthops and neighbour entries go with it. Returns the names removed.
pub fn remove_devices(nl: &mut Netlink) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for l in nl.links()? {
        if is_device_name(&l.name) && l.kind.as_deref() == Some("vxlan") && nl.del_link(l.index)? {
            out.push(l.name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_is_unicast_local_and_follows_the_address() {
        let m = vtep_mac("198.18.0.11".parse().unwrap());
        assert_eq!(mac_to_string(m), "0e:66:c6:12:00:0b");
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        assert_eq!(peer_vtep(&backend_data(1, m), 1), Ok(m));
    }

    #[test]
    fn peer_backend_data_is_checked() {
        let ok = json!({"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:f0"});
        assert_eq!(peer_vtep(&ok, 1), Ok([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xf0]));
        // flannel's older leases have no VNI: the cluster's VNI is assumed.
        assert!(peer_vtep(&json!({"VtepMAC": "0e:66:01:02:03:04"}), 7).is_ok());
        for (data, why) in [
            (json!({"VNI": 2, "VtepMAC": "0e:66:01:02:03:04"}), "VNI 2"),
            (json!({"VNI": 1}), "no VtepMAC"),
            (Value::Null, "no VtepMAC"),
            (json!({"VtepMAC": 5}), "no VtepMAC"),
            (json!({"VtepMAC": "0e:66:01:02:03"}), "not a MAC"),
            (json!({"VtepMAC": "0e:66:01:02:03:04:05"}), "not a MAC"),
            (json!({"VtepMAC": "0e:66:01:02:03:zz"}), "not a MAC"),
            (json!({"VtepMAC": "0e:66:1:02:03:04:"}), "not a MAC"),
            (json!({"VtepMAC": "01:00:5e:00:00:01"}), "unicast"),
            (json!({"VtepMAC": "00:00:00:00:00:00"}), "unicast"),
        ] {
            let e = peer_vtep(&data, 1).unwrap_err();
            assert!(e.contains(why), "{data}: {e}");
        }
    }

    #[test]
    fn device_names() {
        assert_eq!(device_name(1), "ferry.1");
        assert!(is_device_name("ferry.16777215"));
        for n in ["ferry.", "ferry.x", "flannel.1", "ferry0", "ferry.1a"] {
            assert!(!is_device_name(n), "{n}");
        }
    }
}
