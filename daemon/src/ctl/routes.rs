//! `ferryctl routes`: the peer routes this node should have (from the store, judged as ferryd
//! judges them) against the ones Ferry has in the kernel (main table, proto 113), with the same
//! plan ferryd would carry out: missing, wrong gateway, stale.

use super::leases::{lease_map, listing, local, me};
use super::table::render;
use super::{Report, EXIT_DIFFERENT, EXIT_OK};
use crate::args::Args;
use crate::node::find_uplink;
use crate::peers::evaluate;
use crate::route_plan::{plan, Plan, Want};
use crate::route_table::{NetlinkRouteTable, RouteTable};
use ferry_netlink::{Netlink, Route, RTPROT_FERRY, RT_TABLE_MAIN};
use ipnetwork::IpNetwork;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

/// One destination's comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub dst: IpNetwork,
    pub want: Option<IpAddr>,
    pub have: Option<IpAddr>,
    /// `ok`, `missing`, `wrong gateway`, `stale`.
    pub state: &'static str,
    /// Why a missing route is not there, when the kernel says.
    pub reason: Option<String>,
}

/// Every wanted destination and every Ferry route, each with its state, from `plan`.
pub fn compare(want: &Want, have: &[Route], p: &Plan) -> Vec<Line> {
    let gw = |r: &Route| r.gateway;
    let mut lines: BTreeMap<(IpNetwork, u8, Option<IpAddr>), Line> = BTreeMap::new();
    let mut put = |dst, want, have, state, order| {
        lines.insert((dst, order, have), Line { dst, want, have, state, reason: None });
    };
    for (&dst, &w) in want {
        let ours = have.iter().find(|r| r.dst == dst && r.metric.unwrap_or(0) == 0);
        let state = if p.add.iter().any(|(d, _)| *d == dst) {
            "missing"
        } else if p.replace.iter().any(|(d, _)| *d == dst) {
            "wrong gateway"
        } else {
            "ok"
        };
        put(dst, Some(w), ours.and_then(gw), state, 0);
    }
    for r in &p.del {
        put(r.dst, None, gw(r), "stale", 1);
    }
    lines.into_values().collect()
}

/// `ferryctl routes`: exit 1 when the kernel differs from what the store asks for.
pub async fn routes(a: &Args) -> Result<Report, String> {
    let local = local(&a.files)?.ok_or_else(|| {
        format!("no subnet file at {}: is ferryd running here?", a.files.subnet_file.display())
    })?;
    let (cfg, entries) = listing(a).await?;
    let mut nl = Netlink::new().map_err(|e| format!("netlink socket: {e}"))?;
    let uplink =
        find_uplink(&mut nl, a.uplink.public_ip, a.uplink.public_ipv6, a.uplink.iface.as_deref())
            .ok();
    let me = me(cfg.as_ref(), Some(&local), uplink.and_then(|u| u.public_ip), &entries)
        .ok_or("neither the store nor the subnet file names the cluster network")?;
    let v = evaluate(&lease_map(&entries), &me, SystemTime::now());
    let mut want = v.want;
    let mut table = NetlinkRouteTable::new(nl);
    let have = table.ferry_routes().map_err(|e| format!("list routes: {e}"))?;
    // vxlan backend: a peer that can be sent VXLAN is right either way, direct or through the
    // device (ferryd picks by the connected networks); say which.
    let mut vxlan = Vec::new();
    for s in v.vteps.keys() {
        let (dst, vtep) = (IpNetwork::V4(*s), IpAddr::V4(crate::overlay::vtep_ip(*s)));
        if have.iter().any(|r| r.dst == dst && r.gateway == Some(vtep)) {
            if let Some(gw) = want.insert(dst, vtep) {
                vxlan.push((dst, gw));
            }
        }
    }
    let mut lines = compare(&want, &have, &plan(&want, &have));
    for l in lines.iter_mut() {
        if let Some((_, gw)) = vxlan.iter().find(|(d, _)| *d == l.dst) {
            l.reason = Some(format!("VXLAN to {gw}"));
        }
    }
    explain_missing(&mut lines, &mut table)?;
    let ip = me.v4.map(|m| IpAddr::V4(m.public_ip)).or(me.v6.map(|m| IpAddr::V6(m.public_ip)));
    Ok(report(&lines, &me.subnets().to_string(), ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
}

/// Say why each missing route is missing, when the kernel shows a reason: its gateway is not
/// directly reachable, or a route Ferry does not own holds the destination.
fn explain_missing(lines: &mut [Line], table: &mut NetlinkRouteTable) -> Result<(), String> {
    if !lines.iter().any(|l| l.state == "missing") {
        return Ok(());
    }
    let mut nl = Netlink::new().map_err(|e| format!("netlink socket: {e}"))?;
    let mut all = nl.routes(false, RT_TABLE_MAIN, None).map_err(|e| format!("list routes: {e}"))?;
    all.extend(nl.routes(true, RT_TABLE_MAIN, None).map_err(|e| format!("list routes: {e}"))?);
    for l in lines.iter_mut().filter(|l| l.state == "missing") {
        let foreign = all.iter().find(|r| r.dst == l.dst && r.protocol != RTPROT_FERRY);
        l.reason = if let Some(r) = foreign {
            Some(format!("a route Ferry does not own holds it (proto {})", r.protocol))
        } else {
            let gw = l.want.expect("missing routes are wanted");
            match table.route_to(gw) {
                Ok(Some((_, None))) => None,
                Ok(Some((_, Some(via)))) => {
                    Some(format!("gateway {gw} is reached via {via}, not directly"))
                }
                Ok(None) | Err(_) => Some(format!("no route to gateway {gw}")),
            }
        };
    }
    Ok(())
}

fn report(lines: &[Line], subnet: &str, public_ip: IpAddr) -> Report {
    let dash = |g: Option<IpAddr>| g.map_or_else(|| "-".to_string(), |g| g.to_string());
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            let state = match &l.reason {
                Some(r) => format!("{}: {r}", l.state),
                None => l.state.to_string(),
            };
            vec![l.dst.to_string(), dash(l.want), dash(l.have), state]
        })
        .collect();
    let count = |s: &str| lines.iter().filter(|l| l.state == s).count();
    let in_sync = lines.iter().all(|l| l.state == "ok");
    let mut text = render(&["PEER SUBNET", "WANTED GATEWAY", "PROGRAMMED", "STATE"], &rows);
    text.push_str(&format!(
        "\n{}: {} wanted, {} ok, {} missing, {} wrong gateway, {} stale (this node {subnet}, {public_ip})\n",
        if in_sync { "in sync" } else { "DIFFERENT" },
        lines.iter().filter(|l| l.want.is_some()).count(),
        count("ok"),
        count("missing"),
        count("wrong gateway"),
        count("stale"),
    ));
    let json = json!({
        "in_sync": in_sync,
        "subnet": subnet.to_string(),
        "public_ip": public_ip.to_string(),
        "routes": lines.iter().map(|l| json!({
            "subnet": l.dst.to_string(),
            "want": l.want.map(|g| g.to_string()),
            "have": l.have.map(|g| g.to_string()),
            "state": l.state,
            "reason": l.reason,
        })).collect::<Vec<_>>(),
    });
    Report { text, json, code: if in_sync { EXIT_OK } else { EXIT_DIFFERENT } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_plan::peer_route;

    #[test]
    fn compare_names_each_difference() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let want: Want = [
            (n("10.244.1.0/24"), ip("198.18.0.12")),
            (n("10.244.2.0/24"), ip("198.18.0.13")),
            (n("10.244.3.0/24"), ip("198.18.0.14")),
        ]
        .into();
        let have = vec![
            peer_route(n("10.244.1.0/24"), ip("198.18.0.12"), 2),
            peer_route(n("10.244.3.0/24"), ip("198.18.0.99"), 2),
            peer_route(n("10.244.9.0/24"), ip("198.18.0.50"), 2),
        ];
        let lines = compare(&want, &have, &plan(&want, &have));
        let got: Vec<(String, &str)> = lines.iter().map(|l| (l.dst.to_string(), l.state)).collect();
        assert_eq!(
            got,
            [
                ("10.244.1.0/24".to_string(), "ok"),
                ("10.244.2.0/24".into(), "missing"),
                ("10.244.3.0/24".into(), "wrong gateway"),
                ("10.244.9.0/24".into(), "stale"),
            ]
        );
        assert_eq!(lines[2].have, Some(ip("198.18.0.99")));
        let r = report(&lines, "10.244.7.0/24", ip("198.18.0.11"));
        assert_eq!(r.code, EXIT_DIFFERENT);
        assert!(
            r.text.contains("DIFFERENT: 3 wanted, 1 ok, 1 missing, 1 wrong gateway, 1 stale"),
            "{}",
            r.text
        );
        let good: Vec<Route> = want.iter().map(|(d, g)| peer_route(*d, *g, 2)).collect();
        let ok = compare(&want, &good, &plan(&want, &good));
        assert!(ok.iter().all(|l| l.state == "ok" && l.have == l.want), "{ok:?}");
        assert_eq!(report(&ok, "10.244.7.0/24", ip("198.18.0.11")).code, EXIT_OK);
    }
}
