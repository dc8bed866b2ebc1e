/*
 * hpcvirt-noise: an OS-noise probe (selfish-detour loop).
 *
 * Spins on one CPU reading a fine clock; every gap between two consecutive reads longer than the
 * threshold is a detour (the CPU was taken away: an interrupt, another task, the hypervisor).
 * At the end of each report interval it prints one line:
 *
 *   hpcvirt-noise seq=<n> cpu=<c> span_us=<us> count=<n> total_us=<us> max_us=<us> thr_us=<us>
 *
 * span_us is the time spent spinning in that interval, count the detours longer than thr_us,
 * total_us their sum and max_us the longest (0 when none).  With -b it also prints the tiny
 * guest's heartbeat line (docs/guest-image.md) every -b milliseconds, outside the spin, so the
 * heartbeat's own work is not counted as noise.
 *
 * Options (all bounded; a bad value exits 2 naming it):
 *   -c CPU   pin to this CPU (default: where the kernel puts it)
 *   -d S     run for S seconds, 0 for ever (default 10)
 *   -i MS    report interval in milliseconds, 10..60000 (default 1000)
 *   -u PCT   duty: percent of each interval spent spinning, 1..100 (default 100)
 *   -t US    detour threshold in microseconds, 0.1..1000000 (default 2)
 *   -b MS    heartbeat interval in milliseconds, 10..60000 (default: no heartbeat)
 *
 * Built static (Debian's gcc, make noise) so that it runs in the busybox initramfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

typedef unsigned long long u64;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) { (void)sig; stop_requested = 1; }

static u64 mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (u64)ts.tv_sec * 1000000000ULL + (u64)ts.tv_nsec;
}

/* The spin clock: the TSC on x86-64 (a few ns per read, also under QEMU's TCG), else the monotonic
 * clock itself.  Ticks are converted to time with a ratio measured against CLOCK_MONOTONIC. */
#if defined(__x86_64__) || defined(__i386__)
static inline u64 ticks(void)
{
    unsigned int lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
#else
static inline u64 ticks(void) { return mono_ns(); }
#endif

static void sleep_until(u64 ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL) };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !stop_requested)
        ;
}

static int parse_long(const char *name, const char *text, long lo, long hi, long *out)
{
    char *end;
    long value;
    errno = 0;
    value = strtol(text, &end, 10);
    if (errno || end == text || *end || value < lo || value > hi) {
        fprintf(stderr, "hpcvirt-noise: %s must be an integer from %ld to %ld, not '%s'\n", name, lo, hi, text);
        return -1;
    }
    *out = value;
    return 0;
}

static int parse_double(const char *name, const char *text, double lo, double hi, double *out)
{
    char *end;
    double value;
    errno = 0;
    value = strtod(text, &end);
    if (errno || end == text || *end || !(value >= lo && value <= hi)) {
        fprintf(stderr, "hpcvirt-noise: %s must be a number from %g to %g, not '%s'\n", name, lo, hi, text);
        return -1;
    }
    *out = value;
    return 0;
}

/* The first word of a small file, at most `keep` characters of it (buffers are 64 bytes). */
static void read_first_word(const char *path, char *buf, size_t keep)
{
    FILE *f = fopen(path, "r");
    buf[0] = '\0';
    if (f) {
        if (fscanf(f, "%63s", buf) != 1)
            buf[0] = '\0';
        fclose(f);
    }
    if (keep && strlen(buf) > keep)
        buf[keep] = '\0';
}

/* The heartbeat line, byte for byte what tools/guest/workload.sh prints. */
struct heartbeat {
    u64 seq;
    char boot[64];
    char host[65];
    const char *src;
};

static void emit(const char *line, int drain)
{
    fputs(line, stdout);
    fflush(stdout);
    /* On a serial console the UART keeps interrupting until the line is out; wait for that here,
     * outside the spin, so the probe's own output is not measured as noise. */
    if (drain)
        tcdrain(STDOUT_FILENO);
}

static void print_heartbeat(struct heartbeat *hb, int drain)
{
    char up[64], line[320];
    read_first_word("/proc/uptime", up, 0);
    snprintf(line, sizeof line, "hpcvirt-hb seq=%llu up=%s boot=%s host=%s src=%s\n",
             hb->seq, up, hb->boot, hb->host, hb->src);
    emit(line, drain);
    hb->seq++;
}

struct stats {
    u64 spin_ticks, spin_ns, count, total_ticks, max_ticks;
};

int main(int argc, char **argv)
{
    long cpu = -1, duration_s = 10, interval_ms = 1000, duty = 100, hb_ms = 0;
    double thr_us = 2.0;
    int opt, drain;
    struct heartbeat hb = { 0, "", "", "initrd" };
    struct stats st = { 0, 0, 0, 0, 0 };
    u64 seq = 0, start, now, deadline, next_report, next_hb, spin_end, interval_ns;
    double ticks_per_ns;

    while ((opt = getopt(argc, argv, "c:d:i:u:t:b:")) != -1) {
        int bad = 0;
        switch (opt) {
        case 'c': bad = parse_long("-c (cpu)", optarg, 0, CPU_SETSIZE - 1, &cpu); break;
        case 'd': bad = parse_long("-d (seconds)", optarg, 0, 31536000, &duration_s); break;
        case 'i': bad = parse_long("-i (interval ms)", optarg, 10, 60000, &interval_ms); break;
        case 'u': bad = parse_long("-u (duty percent)", optarg, 1, 100, &duty); break;
        case 't': bad = parse_double("-t (threshold us)", optarg, 0.1, 1000000.0, &thr_us); break;
        case 'b': bad = parse_long("-b (heartbeat ms)", optarg, 10, 60000, &hb_ms); break;
        default: bad = -1;
        }
        if (bad) {
            fprintf(stderr, "usage: hpcvirt-noise [-c CPU] [-d S] [-i MS] [-u PCT] [-t US] [-b MS]\n");
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "hpcvirt-noise: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((int)cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0) {
            fprintf(stderr, "hpcvirt-noise: cannot run on CPU %ld: %s\n", cpu, strerror(errno));
            return 1;
        }
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    setvbuf(stdout, NULL, _IOFBF, 4096);
    drain = isatty(STDOUT_FILENO);
    if (hb_ms) {
        const char *src = getenv("HPCVIRT_SOURCE");
        read_first_word("/proc/sys/kernel/random/boot_id", hb.boot, 8);
        if (gethostname(hb.host, sizeof hb.host - 1) != 0)
            hb.host[0] = '\0';
        if (src && *src)
            hb.src = src;
    }

    /* Calibrate the spin clock against CLOCK_MONOTONIC (20 ms); refined every interval. */
    {
        u64 m0 = mono_ns(), t0 = ticks(), m1, t1;
        do { m1 = mono_ns(); } while (m1 - m0 < 20000000ULL);
        t1 = ticks();
        ticks_per_ns = (t1 > t0) ? (double)(t1 - t0) / (double)(m1 - m0) : 1.0;
    }

    interval_ns = (u64)interval_ms * 1000000ULL;
    start = now = mono_ns();
    deadline = duration_s ? start + (u64)duration_s * 1000000000ULL : 0;
    next_report = start + interval_ns;
    next_hb = hb_ms ? start : UINT64_MAX;
    spin_end = start + interval_ns * (u64)duty / 100ULL;

    while (!stop_requested) {
        u64 until;
        if (now >= next_hb) {
            print_heartbeat(&hb, drain);
            next_hb += (u64)hb_ms * 1000000ULL;
            if (next_hb <= now)                 /* after a pause: no burst of catch-up beats */
                next_hb = now + (u64)hb_ms * 1000000ULL;
        }
        if (now >= next_report) {
            char line[256];
            double ns_per_tick;
            if (st.spin_ns >= 1000000ULL && st.spin_ticks > 0)
                ticks_per_ns = (double)st.spin_ticks / (double)st.spin_ns;
            ns_per_tick = 1.0 / ticks_per_ns;
            snprintf(line, sizeof line,
                     "hpcvirt-noise seq=%llu cpu=%d span_us=%llu count=%llu total_us=%.1f max_us=%.1f thr_us=%.1f\n",
                     seq++, sched_getcpu(), st.spin_ns / 1000ULL, st.count,
                     st.total_ticks * ns_per_tick / 1000.0, st.max_ticks * ns_per_tick / 1000.0, thr_us);
            emit(line, drain);
            memset(&st, 0, sizeof st);
            if (deadline && now >= deadline)
                break;
            next_report += interval_ns;
            if (next_report <= now)             /* after a pause: restart the interval grid */
                next_report = now + interval_ns;
            spin_end = next_report - interval_ns + interval_ns * (u64)duty / 100ULL;
            now = mono_ns();
            continue;
        }
        until = next_report < next_hb ? next_report : next_hb;
        if (now < spin_end) {
            /* The selfish-detour loop: spin until `until` (or the end of the duty window). */
            u64 stop_at = spin_end < until ? spin_end : until;
            u64 limit = (u64)((double)(stop_at - now) * ticks_per_ns);
            u64 thr = (u64)(thr_us * 1000.0 * ticks_per_ns);
            u64 m0 = mono_ns(), t0 = ticks(), last = t0, t, d;
            for (;;) {
                t = ticks();
                d = t - last;
                if (d > thr) {
                    st.count++;
                    st.total_ticks += d;
                    if (d > st.max_ticks)
                        st.max_ticks = d;
                }
                last = t;
                if (t - t0 >= limit || stop_requested)
                    break;
            }
            now = mono_ns();
            st.spin_ticks += last - t0;
            st.spin_ns += now - m0;
        } else {
            sleep_until(until);
            now = mono_ns();
        }
    }
    return 0;
}
