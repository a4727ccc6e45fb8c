// SPDX-License-Identifier: GPL-2.0
// mvirt-ebpf datapath: compiled by build.rs with `clang -target bpf -O2 -g`, loaded by aya.
//
// `tap_ingress` runs on the tc ingress hook of every NIC's TAP, i.e. on every frame a VM sends.
// Control traffic (ARP, DHCP, NDP, DHCPv6, anything addressed to the gateway, multicast) is
// dropped here: the daemon's packet socket on the TAP already received a copy (packet taps run
// before tc ingress) through the `control_filter` socket filter, and answers it in userspace.
// IPv4/IPv6 unicast is looked up in the per-network LPM tables (key = network index + address,
// so two networks with the same prefix never see each other), checked against the security
// groups of both NICs with connection tracking, MAC-rewritten and redirected to the destination
// TAP, to the VXLAN tunnel device (routes to other nodes; the VNI names the network), or up the
// host stack (public networks, SNAT by nftables on the uplink).
// `tunnel_ingress` runs on the daemon's VXLAN device (collect_md) and delivers to the TAPs.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ROUTE_NIC 1
#define ROUTE_TUNNEL 2
#define ROUTE_UPLINK 3

/* nic_info.flags: the NIC has security groups (its rules are in sg_nics/sg_rules). */
#define NIC_F_SECURITY 1

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define MAX_RULES 4096

/* Why the datapath dropped a frame: the index into nic_drops.rx/tx (the names are in
 * datapath.rs DROP_REASONS). A deny by security groups can only be "no rule matched": the rules
 * are allow rules, a NIC with groups denies ingress (and, with egress rules, egress) by default. */
#define DROP_MALFORMED 0       /* headers cannot be read */
#define DROP_SPOOFED_MAC 1     /* source MAC is not the NIC's */
#define DROP_SPOOFED_SOURCE 2  /* source address does not route back to the NIC */
#define DROP_NOT_IP 3          /* neither IPv4, IPv6 nor ARP */
#define DROP_NO_ROUTE 4        /* no route for the destination in the NIC's network */
#define DROP_HAIRPIN 5         /* the destination is the sending NIC itself */
#define DROP_NO_EGRESS_RULE 6  /* the sender's groups have egress rules and none matched */
#define DROP_NO_INGRESS_RULE 7 /* the receiver's groups: no ingress rule matched */
#define DROP_ERROR 8           /* a helper failed (MAC rewrite, tunnel key) */
#define DROP_REASONS 16        /* room in nic_drops (a pinned map: its layout must not change) */
#define PASS -1                /* count(): not dropped; policy_verdict(): allowed */

/* A NIC's counters live at index `slot` of nic_counters/nic_drop_counters (per-CPU arrays:
 * an array lookup is inlined, a hash lookup walks a bucket). Slot 0: not counted. */
#define MAX_SLOTS 8192

struct nic_info {
	__u32 network;
	__u32 flags;
	__u8 mac[6];
	__u16 slot;
};

struct route4_key {
	__u32 prefixlen;
	__u32 network;
	__u32 addr;
};

struct route6_key {
	__u32 prefixlen;
	__u32 network;
	__u8 addr[16];
};

/* route.flags */
#define ROUTE_F_PEER 1 /* the destination is a veth: deliver into its peer (bpf_redirect_peer) */
#define ROUTE_F_SECURITY 2 /* the destination NIC has security groups */

struct route {
	__u32 kind;
	__u32 ifindex;
	__u8 mac[6];
	__u8 flags;
	__u8 pad;
	__u32 remote;  /* ROUTE_TUNNEL: remote node IPv4, network byte order */
	__u32 key;     /* ROUTE_TUNNEL: VXLAN VNI of the network; ROUTE_NIC: the NIC's counter slot */
};

struct sg_meta {
	__u32 rules[2];  /* number of rules per direction */
};

struct sg_key {
	__u32 ifindex;
	__u32 index;  /* direction << 16 | rule number */
};

struct sg_rule {
	__u8 family;  /* 0 any, 4, 6 */
	__u8 proto;   /* 0 any, 1 icmp, 6 tcp, 17 udp, 58 icmpv6 */
	__u16 port_lo;
	__u16 port_hi;  /* 0: any port */
	__u8 prefixlen;
	__u8 pad;
	__u8 addr[16];
};

struct ct_key {
	__u32 network;
	__u8 family;
	__u8 proto;
	__u16 sport;
	__u16 dport;
	__u16 pad;
	__u8 src[16];
	__u8 dst[16];
};

struct ct_value {
	__u64 last_seen;
	__u32 closing; /* a FIN was seen: the short timeout applies */
	__u32 pad;
};

struct nic_stats {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 rx_drops;
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 tx_drops;
};

struct nic_drops {
	__u64 rx[DROP_REASONS];
	__u64 tx[DROP_REASONS];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct nic_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route4_key);
	__type(value, struct route);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} routes4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route6_key);
	__type(value, struct route);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} routes6 SEC(".maps");

/* VXLAN VNI -> network index, for decapsulated traffic from other nodes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnel_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct sg_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_nics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_key);
	__type(value, struct sg_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* Per NIC slot (nic_info.slot, ROUTE_NIC route.key): packets and bytes by direction. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct nic_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nic_counters SEC(".maps");

/* Per NIC slot: drops by direction and reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct nic_drops);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nic_drop_counters SEC(".maps");

/* Flows each security-group rule allowed, keyed like sg_rules (NIC, direction, position). Only
 * a flow's first packet walks the rules (conntrack carries the rest), so this counts flows, at
 * no cost to established traffic. Not pinned: the loader knows which rule a position holds
 * only for its own lifetime, and zeroes a position whenever another rule takes it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sg_key);
	__type(value, __u64);
} rule_flows SEC(".maps");

/* Set by the loader (EbpfLoader::set_global). */
volatile const __u64 ct_timeout_ns = 600ULL * 1000000000ULL;
/* 0: count(), the drop reasons and the rule counters do nothing (the verifier removes them).
 * Only mvirt-ebpf-bench clears it, to measure what the counters cost; the daemon needs them
 * (GetNicStats). */
volatile const __u32 counters = 1;

static const __u8 gateway_mac[6] = {0x02, 0x6d, 0x76, 0x00, 0x00, 0x01};
#define GATEWAY_V4 bpf_htonl(0xa9fe0001) /* 169.254.0.1 */

struct flow {
	__u8 family;
	__u8 proto;
	__u8 icmp_type;
	__u8 tcp_flags;
	__u16 sport;
	__u16 dport;
	__u8 src[16];
	__u8 dst[16];
};

/* Counts a frame on the NIC with counter slot `slot`: delivered (`reason` PASS) or dropped for
 * `reason`. */
static __always_inline void count(__u32 slot, int tx, __u64 bytes, int reason)
{
	if (!counters)
		return;
	int dropped = reason != PASS;
	if (dropped) {
		struct nic_drops *d = bpf_map_lookup_elem(&nic_drop_counters, &slot);
		if (d) {
			__u32 r = (__u32)reason & (DROP_REASONS - 1);
			if (tx)
				d->tx[r]++;
			else
				d->rx[r]++;
		}
	}
	struct nic_stats *s = bpf_map_lookup_elem(&nic_counters, &slot);
	if (!s)
		return;
	if (tx) {
		if (dropped)
			s->tx_drops++;
		else {
			s->tx_packets++;
			s->tx_bytes += bytes;
		}
	} else {
		if (dropped)
			s->rx_drops++;
		else {
			s->rx_packets++;
			s->rx_bytes += bytes;
		}
	}
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline int prefix_match(const __u8 *rule, const __u8 *addr, __u32 prefixlen)
{
	for (int i = 0; i < 16; i++) {
		if (prefixlen == 0)
			return 1;
		__u8 mask = prefixlen >= 8 ? 0xff : (__u8)(0xff << (8 - prefixlen));
		if ((rule[i] & mask) != (addr[i] & mask))
			return 0;
		prefixlen = prefixlen >= 8 ? prefixlen - 8 : 0;
	}
	return 1;
}

struct match_ctx {
	__u32 ifindex;
	__u32 dir;
	__u8 family;
	__u8 proto;
	__u16 port;
	__u8 remote[16];
	int allowed;
	__u32 matched; /* the rule's position, when allowed */
};

static long match_rule(__u32 i, void *data)
{
	struct match_ctx *m = data;
	struct sg_key k = {.ifindex = m->ifindex, .index = (m->dir << 16) | (i & 0xffff)};
	struct sg_rule *r = bpf_map_lookup_elem(&sg_rules, &k);
	if (!r)
		return 0;
	if (r->family && r->family != m->family)
		return 0;
	if (r->proto && r->proto != m->proto)
		return 0;
	if (r->port_hi && (m->port < r->port_lo || m->port > r->port_hi))
		return 0;
	if (!prefix_match(r->addr, m->remote, r->prefixlen > 128 ? 128 : r->prefixlen))
		return 0;
	m->allowed = 1;
	m->matched = i & 0xffff;
	return 1;
}

#define SG_DENY -1    /* no rule matched */
#define SG_DEFAULT -2 /* allowed by default, no rule involved */

/* Which rule of NIC `ifindex` allows `f` in direction `dir`: its position, or SG_DENY / SG_DEFAULT.
 * Defaults: a NIC without security groups allows everything; with security groups, ingress is
 * denied unless a rule allows it, and egress is allowed unless the groups have egress rules. */
static __always_inline int sg_match(__u32 ifindex, __u32 dir, const struct flow *f)
{
	struct sg_meta *meta = bpf_map_lookup_elem(&sg_nics, &ifindex);
	if (!meta)
		return SG_DEFAULT;
	__u32 n = dir == DIR_INGRESS ? meta->rules[0] : meta->rules[1];
	if (n == 0)
		return dir == DIR_EGRESS ? SG_DEFAULT : SG_DENY;
	if (n > MAX_RULES)
		n = MAX_RULES;
	struct match_ctx m = {.ifindex = ifindex, .dir = dir, .family = f->family, .proto = f->proto,
			      .port = f->dport, .allowed = 0};
	if (dir == DIR_INGRESS)
		__builtin_memcpy(m.remote, f->src, 16);
	else
		__builtin_memcpy(m.remote, f->dst, 16);
	bpf_loop(n, match_rule, &m, 0);
	return m.allowed ? (int)(m.matched & 0xffff) : SG_DENY;
}

/* One more flow allowed by the rule at `position` of NIC `ifindex` (nothing for SG_DEFAULT). */
static __always_inline void count_rule(__u32 ifindex, __u32 dir, int position)
{
	if (!counters || position < 0)
		return;
	struct sg_key k = {.ifindex = ifindex, .index = (dir << 16) | ((__u32)position & 0xffff)};
	__u64 *v = bpf_map_lookup_elem(&rule_flows, &k);
	if (v)
		(*v)++;
}

#define TCP_FIN 0x01
#define TCP_RST 0x04
#define CT_CLOSING_NS (10ULL * 1000000000ULL)
/* last_seen is rewritten at most this often: a write on every packet bounces the entry's cache
 * line between the CPUs that carry the two directions of a flow. Timeouts are >= 1 s anyway. */
#define CT_REFRESH_NS 1000000000ULL

/* Whether the tracked flow `k` is alive; refreshes it. A TCP RST ends the flow (this packet
 * still passes), a FIN switches it to a short timeout. */
static __always_inline int ct_fresh(struct ct_key *k, __u64 now, const struct flow *f)
{
	struct ct_value *v = bpf_map_lookup_elem(&conntrack, k);
	if (!v)
		return 0;
	__u64 timeout = v->closing ? CT_CLOSING_NS : ct_timeout_ns;
	if (timeout > ct_timeout_ns)
		timeout = ct_timeout_ns;
	if (now - v->last_seen > timeout) {
		bpf_map_delete_elem(&conntrack, k);
		return 0;
	}
	if (f->proto == IPPROTO_TCP && (f->tcp_flags & TCP_RST)) {
		bpf_map_delete_elem(&conntrack, k);
		return 1;
	}
	if (f->proto == IPPROTO_TCP && (f->tcp_flags & TCP_FIN) && !v->closing)
		v->closing = 1;
	if (now - v->last_seen > CT_REFRESH_NS)
		v->last_seen = now;
	return 1;
}

/* Security-group verdict for a flow from NIC `src_if` (0: from a tunnel/host) to NIC `dst_if`
 * (0: leaves the node); `src_sg`/`dst_sg`: whether they have security groups (flags in their
 * nic_info and route entries, so unfiltered traffic costs no lookup here). Connection tracking:
 * an allowed flow is remembered; its replies pass. Returns PASS or the drop reason. */
static __always_inline int policy_verdict(__u32 network, __u32 src_if, int src_sg, __u32 dst_if,
					  int dst_sg, const struct flow *f)
{
	if (!src_sg && !dst_sg)
		return PASS;

	__u64 now = bpf_ktime_get_ns();
	struct ct_key k = {.network = network, .family = f->family, .proto = f->proto,
			   .sport = f->sport, .dport = f->dport};
	__builtin_memcpy(k.src, f->src, 16);
	__builtin_memcpy(k.dst, f->dst, 16);
	if (ct_fresh(&k, now, f))
		return PASS;
	struct ct_key r = {.network = network, .family = f->family, .proto = f->proto,
			   .sport = f->dport, .dport = f->sport};
	__builtin_memcpy(r.src, f->dst, 16);
	__builtin_memcpy(r.dst, f->src, 16);
	if (ct_fresh(&r, now, f))
		return PASS;

	int egress = src_sg ? sg_match(src_if, DIR_EGRESS, f) : SG_DEFAULT;
	if (egress == SG_DENY)
		return DROP_NO_EGRESS_RULE;
	int ingress = dst_sg ? sg_match(dst_if, DIR_INGRESS, f) : SG_DEFAULT;
	if (ingress == SG_DENY)
		return DROP_NO_INGRESS_RULE;
	count_rule(src_if, DIR_EGRESS, egress);
	count_rule(dst_if, DIR_INGRESS, ingress);
	if (f->proto == IPPROTO_TCP && (f->tcp_flags & TCP_RST))
		return PASS; /* a stray RST is allowed but starts nothing */
	struct ct_value v = {.last_seen = now};
	bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY);
	return PASS;
}

/* Fills ports of `f` from the L4 header at offset `l4`. ICMP echo uses the identifier as both
 * ports so that a reply matches the request's reverse tuple. */
static __always_inline int parse_l4(struct __sk_buff *skb, __u32 l4, struct flow *f)
{
	if (f->proto == IPPROTO_TCP) {
		__u8 hdr[14];
		if (bpf_skb_load_bytes(skb, l4, hdr, 14) < 0)
			return -1;
		f->sport = ((__u16)hdr[0] << 8) | hdr[1];
		f->dport = ((__u16)hdr[2] << 8) | hdr[3];
		f->tcp_flags = hdr[13];
	} else if (f->proto == IPPROTO_UDP) {
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, l4, ports, 4) < 0)
			return -1;
		f->sport = bpf_ntohs(ports[0]);
		f->dport = bpf_ntohs(ports[1]);
	} else if (f->proto == IPPROTO_ICMP || f->proto == IPPROTO_ICMPV6) {
		__u8 hdr[8];
		if (bpf_skb_load_bytes(skb, l4, hdr, 8) < 0)
			return -1;
		__u8 type = hdr[0];
		f->icmp_type = type;
		int echo = f->proto == IPPROTO_ICMP ? (type == 8 || type == 0) : (type == 128 || type == 129);
		if (echo) {
			__u16 id = ((__u16)hdr[4] << 8) | hdr[5];
			f->sport = id;
			f->dport = id;
		} else {
			f->sport = type;
			f->dport = 0;
		}
	}
	return 0;
}

/* Destination MAC = the NIC's, source MAC = the gateway's: one 12-byte write. */
static __always_inline int rewrite_macs(struct __sk_buff *skb, const __u8 *dst_mac)
{
	__u8 macs[12];
	__builtin_memcpy(macs, dst_mac, 6);
	__builtin_memcpy(macs + 6, gateway_mac, 6);
	return bpf_skb_store_bytes(skb, 0, macs, 12, 0);
}

/* To a NIC. A TAP (every VM NIC) gets the frame on its egress, i.e. the VM reads it; a veth
 * destination is entered from the peer side directly (bpf_redirect_peer: no second pass through
 * the backlog queue). Only the tc ingress hook may use bpf_redirect_peer. */
static __always_inline int redirect(const struct route *rt)
{
	if (rt->flags & ROUTE_F_PEER)
		return bpf_redirect_peer(rt->ifindex, 0);
	return bpf_redirect(rt->ifindex, 0);
}

/* The verdict for a frame from NIC `src_if` along route `rt`; on TC_ACT_SHOT, `*reason` says
 * why. */
static __always_inline int deliver(struct __sk_buff *skb, __u32 network, __u32 src_if,
				   int src_sg, struct route *rt, const struct flow *f, __u64 len,
				   int *reason)
{
	int verdict;
	if (rt->kind == ROUTE_NIC) {
		if (rt->ifindex == src_if) {
			*reason = DROP_HAIRPIN;
			return TC_ACT_SHOT;
		}
		verdict = policy_verdict(network, src_if, src_sg, rt->ifindex,
					 rt->flags & ROUTE_F_SECURITY, f);
		if (verdict != PASS) {
			count(rt->key, 1, len, verdict);
			*reason = verdict;
			return TC_ACT_SHOT;
		}
		if (rewrite_macs(skb, rt->mac) < 0) {
			*reason = DROP_ERROR;
			return TC_ACT_SHOT;
		}
		count(rt->key, 1, len, PASS);
		return redirect(rt);
	}
	verdict = policy_verdict(network, src_if, src_sg, 0, 0, f);
	if (verdict != PASS) {
		*reason = verdict;
		return TC_ACT_SHOT;
	}
	if (rt->kind == ROUTE_TUNNEL) {
		struct bpf_tunnel_key key = {};
		key.remote_ipv4 = bpf_ntohl(rt->remote);
		key.tunnel_id = rt->key;
		key.tunnel_ttl = 64;
		if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), 0) < 0) {
			*reason = DROP_ERROR;
			return TC_ACT_SHOT;
		}
		return bpf_redirect(rt->ifindex, 0);
	}
	if (rt->kind == ROUTE_UPLINK)
		return TC_ACT_OK;
	*reason = DROP_NO_ROUTE;
	return TC_ACT_SHOT;
}

static __always_inline int flow_v4(struct __sk_buff *skb, __u32 off, struct flow *f, __u32 *dst)
{
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.ihl < 5)
		return -1;
	__builtin_memset(f, 0, sizeof(*f));
	f->family = 4;
	f->proto = ip.protocol;
	__builtin_memcpy(f->src, &ip.saddr, 4);
	__builtin_memcpy(f->dst, &ip.daddr, 4);
	*dst = ip.daddr;
	if (ip.frag_off & bpf_htons(0x1fff)) /* non-first fragment: no ports */
		return 0;
	return parse_l4(skb, off + ip.ihl * 4, f);
}

static __always_inline int flow_v6(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	struct ipv6hdr ip;
	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return -1;
	__builtin_memset(f, 0, sizeof(*f));
	f->family = 6;
	f->proto = ip.nexthdr;
	__builtin_memcpy(f->src, &ip.saddr, 16);
	__builtin_memcpy(f->dst, &ip.daddr, 16);
	return parse_l4(skb, off + sizeof(ip), f);
}

static __always_inline int is_ndp_or_control_v6(const struct flow *f)
{
	if (f->dst[0] == 0xff) /* multicast: NDP, MLD, DHCPv6 solicit */
		return 1;
	if (f->dst[0] == 0xfe && (f->dst[1] & 0xc0) == 0x80) /* link-local, e.g. fe80::1 */
		return 1;
	if (f->proto == IPPROTO_ICMPV6 && f->icmp_type >= 133 && f->icmp_type <= 137)
		return 1;
	if (f->proto == IPPROTO_UDP && f->dport == 547)
		return 1;
	return 0;
}

SEC("classifier/tap_ingress")
int tap_ingress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ingress_ifindex;
	struct nic_info *nic = bpf_map_lookup_elem(&nics, &ifindex);
	if (!nic)
		return TC_ACT_OK;
	__u32 network = nic->network;
	__u32 slot = nic->slot;
	int src_sg = nic->flags & NIC_F_SECURITY;
	__u64 len = skb->len;
	int reason = DROP_MALFORMED;

	struct ethhdr eth;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		goto drop;
	__u16 proto = bpf_ntohs(eth.h_proto);
	/* Frames not from the NIC's own MAC are spoofed. */
	if (!mac_equal(eth.h_source, nic->mac)) {
		reason = DROP_SPOOFED_MAC;
		goto drop;
	}

	struct flow f;
	struct route *rt;
	if (proto == ETH_P_ARP) {
		count(slot, 0, len, PASS);
		return TC_ACT_SHOT; /* answered by the userspace responder */
	} else if (proto == ETH_P_IP) {
		__u32 dst;
		if (flow_v4(skb, sizeof(eth), &f, &dst) < 0)
			goto drop;
		__u8 first = ((__u8 *)&dst)[0];
		if (dst == GATEWAY_V4 || dst == 0xffffffff || (first >= 224 && first < 240) ||
		    (f.proto == IPPROTO_UDP && f.dport == 67)) {
			count(slot, 0, len, PASS);
			return TC_ACT_SHOT; /* userspace: DHCP, ICMP echo to the gateway */
		}
		/* Anti-spoofing: the source must route back to this very NIC (its address or one of
		 * its routed prefixes), so security-group rules can trust source addresses. */
		struct route4_key sk = {.prefixlen = 64, .network = network};
		__builtin_memcpy(&sk.addr, f.src, 4);
		struct route *own = bpf_map_lookup_elem(&routes4, &sk);
		if (!own || own->kind != ROUTE_NIC || own->ifindex != ifindex) {
			reason = DROP_SPOOFED_SOURCE;
			goto drop;
		}
		struct route4_key k = {.prefixlen = 64, .network = network, .addr = dst};
		rt = bpf_map_lookup_elem(&routes4, &k);
	} else if (proto == ETH_P_IPV6) {
		if (flow_v6(skb, sizeof(eth), &f) < 0)
			goto drop;
		if (is_ndp_or_control_v6(&f)) {
			count(slot, 0, len, PASS);
			return TC_ACT_SHOT;
		}
		struct route6_key sk = {.prefixlen = 32 + 128, .network = network};
		__builtin_memcpy(sk.addr, f.src, 16);
		struct route *own = bpf_map_lookup_elem(&routes6, &sk);
		if (!own || own->kind != ROUTE_NIC || own->ifindex != ifindex) {
			reason = DROP_SPOOFED_SOURCE;
			goto drop;
		}
		struct route6_key k = {.prefixlen = 32 + 128, .network = network};
		__builtin_memcpy(k.addr, f.dst, 16);
		rt = bpf_map_lookup_elem(&routes6, &k);
	} else {
		reason = DROP_NOT_IP;
		goto drop;
	}
	if (!rt) {
		reason = DROP_NO_ROUTE;
		goto drop;
	}
	int verdict = deliver(skb, network, ifindex, src_sg, rt, &f, len, &reason);
	if (verdict == TC_ACT_SHOT)
		goto drop;
	count(slot, 0, len, PASS);
	return verdict;
drop:
	count(slot, 0, len, reason);
	return TC_ACT_SHOT;
}

/* On the VXLAN device (collect_md): frames from another node, decapsulated by the kernel.
 * The VNI names the network; the inner Ethernet header is rewritten for the destination NIC. */
SEC("classifier/tunnel_ingress")
int tunnel_ingress(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;
	__u32 tkey = key.tunnel_id;
	__u32 *network = bpf_map_lookup_elem(&tunnel_keys, &tkey);
	if (!network)
		return TC_ACT_SHOT;
	__u32 net = *network;
	__u16 proto;
	if (bpf_skb_load_bytes(skb, 12, &proto, 2) < 0)
		return TC_ACT_SHOT;
	struct flow f;
	struct route *rt;
	if (proto == bpf_htons(ETH_P_IP)) {
		__u32 dst;
		if (flow_v4(skb, sizeof(struct ethhdr), &f, &dst) < 0)
			return TC_ACT_SHOT;
		struct route4_key k = {.prefixlen = 64, .network = net, .addr = dst};
		rt = bpf_map_lookup_elem(&routes4, &k);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		if (flow_v6(skb, sizeof(struct ethhdr), &f) < 0)
			return TC_ACT_SHOT;
		struct route6_key k = {.prefixlen = 32 + 128, .network = net};
		__builtin_memcpy(k.addr, f.dst, 16);
		rt = bpf_map_lookup_elem(&routes6, &k);
	} else {
		return TC_ACT_SHOT;
	}
	if (!rt || rt->kind != ROUTE_NIC)
		return TC_ACT_SHOT;
	__u32 dst_if = rt->ifindex;
	__u32 dst_slot = rt->key;
	int dst_sg = rt->flags & ROUTE_F_SECURITY;
	__u8 mac[6];
	__builtin_memcpy(mac, rt->mac, 6);
	int verdict = policy_verdict(net, 0, 0, dst_if, dst_sg, &f);
	if (verdict != PASS) {
		count(dst_slot, 1, skb->len, verdict);
		return TC_ACT_SHOT;
	}
	if (rewrite_macs(skb, mac) < 0) {
		count(dst_slot, 1, skb->len, DROP_ERROR);
		return TC_ACT_SHOT;
	}
	count(dst_slot, 1, skb->len, PASS);
	return bpf_redirect(dst_if, 0);
}

/* Socket filter for the responder's AF_PACKET socket on a TAP: accept only frames the VM sent
 * that userspace answers (ARP, DHCPv4, ICMP to the gateway, NDP/RS, DHCPv6, ICMPv6 echo to
 * the gateway). Returning 0 drops the copy for this socket only. */
SEC("socket")
int control_filter(struct __sk_buff *skb)
{
	if (skb->pkt_type == PACKET_OUTGOING)
		return 0;
	__u16 proto;
	if (bpf_skb_load_bytes(skb, 12, &proto, 2) < 0)
		return 0;
	proto = bpf_ntohs(proto);
	if (proto == ETH_P_ARP)
		return skb->len;
	if (proto == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 14, &ip, sizeof(ip)) < 0)
			return 0;
		if (ip.protocol == IPPROTO_ICMP && ip.daddr == GATEWAY_V4)
			return skb->len;
		if (ip.protocol == IPPROTO_UDP) {
			__u16 dport;
			if (bpf_skb_load_bytes(skb, 14 + ip.ihl * 4 + 2, &dport, 2) < 0)
				return 0;
			if (dport == bpf_htons(67))
				return skb->len;
		}
		return 0;
	}
	if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip;
		if (bpf_skb_load_bytes(skb, 14, &ip, sizeof(ip)) < 0)
			return 0;
		if (ip.nexthdr == IPPROTO_ICMPV6) {
			__u8 type;
			if (bpf_skb_load_bytes(skb, 14 + sizeof(ip), &type, 1) < 0)
				return 0;
			if (type == 128 || type == 133 || type == 135)
				return skb->len;
			return 0;
		}
		if (ip.nexthdr == IPPROTO_UDP) {
			__u16 dport;
			if (bpf_skb_load_bytes(skb, 14 + sizeof(ip) + 2, &dport, 2) < 0)
				return 0;
			if (dport == bpf_htons(547))
				return skb->len;
		}
	}
	return 0;
}

char _license[] SEC("license") = "GPL";
