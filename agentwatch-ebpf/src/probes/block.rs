//! Ceilings at the socket layer, attached at the cgroup v2 root when ceilings are
//! configured: `block` refuses new connections to LLM endpoints (connect fails with EPERM),
//! and the egress program keeps held sockets' packets inside the host. Processes that are
//! not blocked or held pay one hash lookup.
use agentwatch_ebpf::*;
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::{cgroup_skb, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};

use aya_log_ebpf::info;

use crate::maps::{BLOCKED_DEST4, BLOCKED_DEST6, BLOCKED_TGIDS, HELD_SOCKS};
use crate::output::drop_count;

#[cgroup_sock_addr(connect4)]
pub fn block_connect4(ctx: SockAddrContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { BLOCKED_TGIDS.get(&tgid) }.is_none() {
        return 1;
    }
    let dest = unsafe {
        let sa = ctx.sock_addr;
        Dest4 {
            ip: core::ptr::read_volatile(&(*sa).user_ip4),
            port: core::ptr::read_volatile(&(*sa).user_port),
        }
    };
    if unsafe { BLOCKED_DEST4.get(&dest) }.is_some() {
        // Rare (a blocked session trying again): said once per refusal in the daemon's log.
        info!(
            &ctx,
            "block: refused pid {}'s connect to {:i}:{}",
            tgid,
            u32::from_be(dest.ip),
            u16::from_be(dest.port as u16)
        );
        0
    } else {
        1
    }
}

#[cgroup_sock_addr(connect6)]
pub fn block_connect6(ctx: SockAddrContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { BLOCKED_TGIDS.get(&tgid) }.is_none() {
        return 1;
    }
    // The context allows only 4-byte loads of user_ip6: read word by word.
    let dest = unsafe {
        let sa = ctx.sock_addr;
        Dest6 {
            ip: [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ],
            port: core::ptr::read_volatile(&(*sa).user_port),
        }
    };
    if unsafe { BLOCKED_DEST6.get(&dest) }.is_some() {
        info!(
            &ctx,
            "block: refused pid {}'s IPv6 connect to port {}",
            tgid,
            u16::from_be(dest.port as u16)
        );
        0
    } else {
        1
    }
}

/// Egress of every socket: packets of a held socket are dropped, so TCP keeps them queued
/// (and retries them once the socket is released).
#[cgroup_skb(egress)]
pub fn hold_egress(ctx: SkBuffContext) -> i32 {
    let cookie = unsafe { generated::bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    if cookie != 0 && unsafe { HELD_SOCKS.get(&cookie) }.is_some() {
        drop_count(DROP_HELD_PACKETS, 1);
        return 0;
    }
    1
}
