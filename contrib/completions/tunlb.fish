# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_tunlb_global_optspecs
    string join \n h/help V/version
end

function __fish_tunlb_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_tunlb_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_tunlb_using_subcommand
    set -l cmd (__fish_tunlb_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c tunlb -n "__fish_tunlb_needs_command" -s h -l help -d 'Print help'
complete -c tunlb -n "__fish_tunlb_needs_command" -s V -l version -d 'Print version'
complete -c tunlb -n "__fish_tunlb_needs_command" -f -a "run" -d 'Balance TCP connections to a VIP over backends, through a TUN device'
complete -c tunlb -n "__fish_tunlb_needs_command" -f -a "iptables" -d 'Print the equivalent iptables ruleset (correctly cascaded) and exit'
complete -c tunlb -n "__fish_tunlb_needs_command" -f -a "flows" -d 'List the flows of a running tunlb, like `conntrack -L`'
complete -c tunlb -n "__fish_tunlb_needs_command" -f -a "stats" -d 'Print the counters of a running tunlb, like `ipvsadm -L -n --stats`'
complete -c tunlb -n "__fish_tunlb_needs_command" -f -a "events" -d 'Follow the flow events of a running tunlb (NEW, UPDATE, DESTROY), like `conntrack -E`'
complete -c tunlb -n "__fish_tunlb_needs_command" -f -a "ladder" -d 'Draw one connection of a --pcap capture as a sequence diagram (SVG on stdout); without --flow, list them'
complete -c tunlb -n "__fish_tunlb_needs_command" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c tunlb -n "__fish_tunlb_needs_command" -f -a "man" -d 'Print the man page tunlb(1) to stdout, or write every page with --out'
complete -c tunlb -n "__fish_tunlb_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l vip -d 'The virtual IP and port clients connect to' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l backend -d 'A backend; repeat for each. weight defaults to 1; 0 takes no new connections' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l mode -d 'How NEW connections pick a backend' -r -f -a "nth\t'Round robin with one shared counter, like `-m statistic --mode nth`'
random\t'One weighted random draw per connection, like `--mode random`'
wrr\t'Smooth weighted round robin (IPVS wrr)'
lc\t'Weighted least connections (IPVS wlc)'
maglev\t'Consistent hashing of the client address (Maglev, IPVS mh)'"
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l snat -d 'MASQUERADE source address (default: the VIP\'s address); repeat for a pool' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l max-flows -d 'The most flows tracked at once (default 262144)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l config -d 'A TOML file with services, timeouts and limits (flags override it)' -r -F
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l tun -d 'The TUN device: created if --tun-addr is given, else attached (it must exist)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l tun-addr -d 'Create the TUN with this host-side address; the rest of the prefix routes into it. Repeat for one IPv4 and one IPv6 prefix' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l threads -d 'Packet threads sharing the flow table (default 1)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l mtu -d 'MTU of a TUN tunlb creates (default 1500)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l busy-poll -d 'While bulk data flows, keep reading an empty TUN queue for USECS microseconds before sleeping (default 50; 0: off)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l nice -d 'Nice value of the packet threads, -20 to 19 (default: the process\'s); below the process\'s needs CAP_SYS_NICE. -10 is worth 1.1-1.35x new connections/s with one instance per host' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l stats-interval -d 'Log a one-line counter summary every SECS seconds (default 0: off)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l control -d 'Control socket for `tunlb flows` / `tunlb stats` (default /run/tunlb/TUN.NETNS.sock)' -r -F
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l hash-key -d 'Secret keying the SNAT address and port choices; instances that must agree (ECMP, restarts) share it' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l state-file -d 'Save the flow table here on SIGTERM/SIGINT (and every --state-interval) and restore it at start' -r -F
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l state-interval -d 'Seconds between saves of the flow table to --state-file while running; 0: only on exit [default: 5]' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l io -d 'Datapath: vnet (multi-queue TUN, offloads; default), tun (the tun crate, one queue) or packet (packet sockets, no TUN)' -r -f -a "vnet\t'Multi-queue TUN with virtio-net header and TCP offloads'
tun\t'The `tun` crate: one queue, no offloads'
packet\t'Packet sockets with receive rings on the host\'s interfaces, no TUN (CAP_NET_RAW)'"
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l iface -d 'With --io packet: an interface to listen and send on; repeat for more (default: every one that is up)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l pcap -d 'Record every packet as received (before NAT) and as sent (after NAT) in a pcapng file for Wireshark' -r -F
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l pcap-limit -d 'Stop recording --pcap after N packets, or a size such as 10MiB [default: 64MiB]' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l trace -d 'Print every NAT decision and state change, in netfilter\'s words'
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l set-sysctls -d 'Set net.ipv4.ip_forward=1 (net.ipv6.conf.all.forwarding=1 for IPv6 services) in this namespace instead of refusing to start'
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l health-check -d 'Check backends by TCP connect (every 2 s, rise 2, fall 3; tune in [health] of the config)'
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l pickup -d 'Pick up flows already under way (an ACK with no entry), like nf_conntrack_tcp_loose=1; needs --mode maglev'
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l no-offload -d 'Do not ask the TUN for TSO/checksum offloads (one packet per read and write)'
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -l liberal -d 'Let TCP segments outside the sequence window through (RSTs are still checked), like nf_conntrack_tcp_be_liberal=1'
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tunlb -n "__fish_tunlb_using_subcommand run" -s V -l version -d 'Print version'
complete -c tunlb -n "__fish_tunlb_using_subcommand iptables" -l vip -d 'The virtual IP and port clients connect to' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand iptables" -l backend -d 'A backend; repeat for each. weight defaults to 1; 0 takes no new connections' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand iptables" -l mode -d 'How NEW connections pick a backend' -r -f -a "nth\t'Round robin with one shared counter, like `-m statistic --mode nth`'
random\t'One weighted random draw per connection, like `--mode random`'
wrr\t'Smooth weighted round robin (IPVS wrr)'
lc\t'Weighted least connections (IPVS wlc)'
maglev\t'Consistent hashing of the client address (Maglev, IPVS mh)'"
complete -c tunlb -n "__fish_tunlb_using_subcommand iptables" -l snat -d 'MASQUERADE source address (default: the VIP\'s address); repeat for a pool' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand iptables" -l max-flows -d 'The most flows tracked at once (default 262144)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand iptables" -l config -d 'A TOML file with services, timeouts and limits (flags override it)' -r -F
complete -c tunlb -n "__fish_tunlb_using_subcommand iptables" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tunlb -n "__fish_tunlb_using_subcommand iptables" -s V -l version -d 'Print version'
complete -c tunlb -n "__fish_tunlb_using_subcommand flows" -l control -d 'The instance\'s control socket (default: derived from --tun)' -r -F
complete -c tunlb -n "__fish_tunlb_using_subcommand flows" -l tun -d 'The instance\'s TUN name, to find its default control socket (default: tl0\'s, or if there is none, that of the instance on the packet datapath in this namespace)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand flows" -l json -d 'Print JSON for scripts'
complete -c tunlb -n "__fish_tunlb_using_subcommand flows" -s h -l help -d 'Print help'
complete -c tunlb -n "__fish_tunlb_using_subcommand flows" -s V -l version -d 'Print version'
complete -c tunlb -n "__fish_tunlb_using_subcommand stats" -l control -d 'The instance\'s control socket (default: derived from --tun)' -r -F
complete -c tunlb -n "__fish_tunlb_using_subcommand stats" -l tun -d 'The instance\'s TUN name, to find its default control socket (default: tl0\'s, or if there is none, that of the instance on the packet datapath in this namespace)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand stats" -l json -d 'Print JSON for scripts'
complete -c tunlb -n "__fish_tunlb_using_subcommand stats" -s h -l help -d 'Print help'
complete -c tunlb -n "__fish_tunlb_using_subcommand stats" -s V -l version -d 'Print version'
complete -c tunlb -n "__fish_tunlb_using_subcommand events" -l control -d 'The instance\'s control socket (default: derived from --tun)' -r -F
complete -c tunlb -n "__fish_tunlb_using_subcommand events" -l tun -d 'The instance\'s TUN name, to find its default control socket (default: tl0\'s, or if there is none, that of the instance on the packet datapath in this namespace)' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand events" -l json -d 'Print JSON for scripts'
complete -c tunlb -n "__fish_tunlb_using_subcommand events" -s h -l help -d 'Print help'
complete -c tunlb -n "__fish_tunlb_using_subcommand events" -s V -l version -d 'Print version'
complete -c tunlb -n "__fish_tunlb_using_subcommand ladder" -l flow -d 'The connection to draw, numbered from 1 as the listing shows' -r
complete -c tunlb -n "__fish_tunlb_using_subcommand ladder" -s h -l help -d 'Print help'
complete -c tunlb -n "__fish_tunlb_using_subcommand ladder" -s V -l version -d 'Print version'
complete -c tunlb -n "__fish_tunlb_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tunlb -n "__fish_tunlb_using_subcommand completions" -s V -l version -d 'Print version'
complete -c tunlb -n "__fish_tunlb_using_subcommand man" -l out -d 'Write one page per command (tunlb.1, tunlb-run.1, ...) into DIR instead' -r -f -a "(__fish_complete_directories)"
complete -c tunlb -n "__fish_tunlb_using_subcommand man" -s h -l help -d 'Print help'
complete -c tunlb -n "__fish_tunlb_using_subcommand man" -s V -l version -d 'Print version'
complete -c tunlb -n "__fish_tunlb_using_subcommand help; and not __fish_seen_subcommand_from run iptables flows stats events ladder completions man help" -f -a "run" -d 'Balance TCP connections to a VIP over backends, through a TUN device'
complete -c tunlb -n "__fish_tunlb_using_subcommand help; and not __fish_seen_subcommand_from run iptables flows stats events ladder completions man help" -f -a "iptables" -d 'Print the equivalent iptables ruleset (correctly cascaded) and exit'
complete -c tunlb -n "__fish_tunlb_using_subcommand help; and not __fish_seen_subcommand_from run iptables flows stats events ladder completions man help" -f -a "flows" -d 'List the flows of a running tunlb, like `conntrack -L`'
complete -c tunlb -n "__fish_tunlb_using_subcommand help; and not __fish_seen_subcommand_from run iptables flows stats events ladder completions man help" -f -a "stats" -d 'Print the counters of a running tunlb, like `ipvsadm -L -n --stats`'
complete -c tunlb -n "__fish_tunlb_using_subcommand help; and not __fish_seen_subcommand_from run iptables flows stats events ladder completions man help" -f -a "events" -d 'Follow the flow events of a running tunlb (NEW, UPDATE, DESTROY), like `conntrack -E`'
complete -c tunlb -n "__fish_tunlb_using_subcommand help; and not __fish_seen_subcommand_from run iptables flows stats events ladder completions man help" -f -a "ladder" -d 'Draw one connection of a --pcap capture as a sequence diagram (SVG on stdout); without --flow, list them'
complete -c tunlb -n "__fish_tunlb_using_subcommand help; and not __fish_seen_subcommand_from run iptables flows stats events ladder completions man help" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c tunlb -n "__fish_tunlb_using_subcommand help; and not __fish_seen_subcommand_from run iptables flows stats events ladder completions man help" -f -a "man" -d 'Print the man page tunlb(1) to stdout, or write every page with --out'
complete -c tunlb -n "__fish_tunlb_using_subcommand help; and not __fish_seen_subcommand_from run iptables flows stats events ladder completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
