/*
 * livemig guest payload: a tiny freestanding x86_64 program for migration tests and benchmarks.
 *
 * Entered from entry.S in long mode with the first 4 GiB identity-mapped and interrupts off.
 * Parameters come from the PVH start-info command line, as space-separated key=value words
 * (sizes accept K/M/G suffixes, numbers accept 0x):
 *
 *   base=ADDR     start of the test region (default 0x400000, 4 MiB)
 *   fill=SIZE     bytes of the region filled with a pseudo-random pattern (default 1M)
 *   ws=SIZE       working set: the first ws bytes are rewritten continuously (default 256K)
 *   burst=N       pages rewritten per counter step (default 4)
 *   seed=N        pattern seed (default 1)
 *   selfcheck=N   verify the whole region every N counter steps; 0 = never (default 0)
 *   max=N         power off after counter step N; 0 = run forever (default 0)
 *   delay=N       busy-wait iterations (`pause`) between counter steps (default 0)
 *   fault=N       triple-fault at counter step N (tests the VMM's crash path); 0 = never
 *
 * Memory layout: the region [base, base+fill) holds 4 KiB pages; page p's 512 words are
 * word[i] = mix(seed, p, gen[p], i). gen[] (one u32 per page) follows the region, page aligned.
 * Rewriting a page increments gen[p] and rewrites all its words, so the whole region can be
 * checked at any counter step (the check runs on the same vCPU, between rewrites).
 *
 * Serial output (COM1, 0x3f8), one line each:
 *
 *   payload start base=0x400000 fill=1048576 ws=262144 seed=1
 *   filled pages=256
 *   count=1
 *   count=2
 *   selfcheck=ok count=2
 *   selfcheck=FAIL addr=0x401238 count=4
 *   poweroff count=10
 *   fault count=3
 *
 * Power off: a 16-bit write of 0x2000 to port 0x604 (livemig's KVM VMM stops the VM; QEMU
 * microvm ignores it), then `cli; hlt` forever.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1 0x3f8
#define POWEROFF_PORT 0x604
#define POWEROFF_VALUE 0x2000
#define PAGE 4096UL
#define START_INFO_MAGIC 0x336ec578U

/* struct hvm_start_info (Xen public/arch-x86/hvm/start_info.h), version 1. */
struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;
    u32 memmap_entries;
    u32 reserved;
};

struct hvm_memmap_table_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
};

/* gcc may emit calls to these even in freestanding code. */
void *memset(void *d, int c, u64 n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, u64 n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

static inline void outb(u16 port, u8 v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(u16 port, u16 v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

/* Both emulated UARTs (vm-superio, QEMU) transmit at once: no LSR polling, one exit a byte. */
static void putc(char c)
{
    outb(COM1, (u8)c);
}

static void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

static void putu(u64 v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts(&buf[i]);
}

static void putx(u64 v)
{
    char buf[19];
    int i = 18;
    buf[i] = 0;
    do {
        buf[--i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    puts("0x");
    puts(&buf[i]);
}

/*
 * Loads an empty IDT and divides by zero: #DE cannot be delivered (#GP), neither can the #DF
 * that follows, so the CPU shuts down. (#DE, unlike #BP or #UD, is not intercepted by KVM, so
 * no instruction emulation is involved.)
 */
static void __attribute__((noreturn)) triple_fault(void)
{
    static const struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } empty_idt = {0, 0};
    __asm__ volatile("lidt %0; xor %%ecx, %%ecx; div %%ecx" : : "m"(empty_idt) : "eax", "ecx", "edx");
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void __attribute__((noreturn)) poweroff(void)
{
    outw(POWEROFF_PORT, POWEROFF_VALUE);
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* splitmix64 finalizer. */
static inline u64 mix(u64 x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9UL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebUL;
    x ^= x >> 31;
    return x;
}

static inline u64 page_key(u64 seed, u64 page, u32 gen)
{
    return mix(seed ^ (page * 0x9e3779b97f4a7c15UL) ^ ((u64)gen << 40));
}

struct params {
    u64 base, fill, ws, burst, seed, selfcheck, max, delay, fault;
};

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n';
}

/* Parses a number with optional 0x prefix and K/M/G suffix; returns 0 on a malformed value. */
static int parse_num(const char *s, u64 *out)
{
    u64 v = 0;
    int base = 10, digits = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            break;
        v = v * (u64)base + (u64)d;
        digits++;
    }
    switch (*s) {
    case 'K': case 'k': v <<= 10; s++; break;
    case 'M': case 'm': v <<= 20; s++; break;
    case 'G': case 'g': v <<= 30; s++; break;
    default: break;
    }
    if (!digits || (*s && !is_space(*s)))
        return 0;
    *out = v;
    return 1;
}

static int key_is(const char *s, const char *key)
{
    while (*key)
        if (*s++ != *key++)
            return 0;
    return *s == '=';
}

static void parse_cmdline(const char *s, struct params *p)
{
    static const char *const keys[] = {"base", "fill", "ws", "burst", "seed",
                                       "selfcheck", "max", "delay", "fault"};
    u64 *const slots[] = {&p->base, &p->fill, &p->ws, &p->burst, &p->seed,
                          &p->selfcheck, &p->max, &p->delay, &p->fault};
    while (s && *s) {
        while (is_space(*s))
            s++;
        for (unsigned k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            if (key_is(s, keys[k])) {
                const char *v = s;
                while (*v != '=')
                    v++;
                if (!parse_num(v + 1, slots[k])) {
                    puts("bad parameter ");
                    puts(keys[k]);
                    putc('\n');
                }
            }
        }
        while (*s && !is_space(*s))
            s++;
    }
}

/* True if [start, end) lies inside one RAM (type 1) entry of the PVH memory map. */
static int in_ram(const struct hvm_start_info *si, u64 start, u64 end)
{
    const struct hvm_memmap_table_entry *m = (const void *)si->memmap_paddr;
    if (!si->memmap_paddr || si->version < 1)
        return end <= (64UL << 20); /* no map: assume the 64 MiB any test VM has */
    for (u32 i = 0; i < si->memmap_entries; i++)
        if (m[i].type == 1 && m[i].addr <= start && end <= m[i].addr + m[i].size)
            return 1;
    return 0;
}

static void write_page(const struct params *p, volatile u32 *gen, u64 page)
{
    volatile u64 *w = (volatile u64 *)(p->base + page * PAGE);
    u64 key = page_key(p->seed, page, gen[page]);
    for (u64 i = 0; i < PAGE / 8; i++)
        w[i] = mix(key ^ i);
}

/* Returns the address of the first bad word, or 0. */
static u64 check_region(const struct params *p, volatile u32 *gen, u64 pages)
{
    for (u64 page = 0; page < pages; page++) {
        volatile u64 *w = (volatile u64 *)(p->base + page * PAGE);
        u64 key = page_key(p->seed, page, gen[page]);
        for (u64 i = 0; i < PAGE / 8; i++)
            if (w[i] != mix(key ^ i))
                return (u64)&w[i];
    }
    return 0;
}

void payload_main(u32 start_info_paddr)
{
    const struct hvm_start_info *si = (const void *)(u64)start_info_paddr;
    struct params p = {
        .base = 0x400000, .fill = 1UL << 20, .ws = 256UL << 10, .burst = 4, .seed = 1,
        .selfcheck = 0, .max = 0, .delay = 0, .fault = 0,
    };
    if (si->magic != START_INFO_MAGIC) {
        puts("payload: bad PVH start info magic\n");
        poweroff();
    }
    if (si->cmdline_paddr)
        parse_cmdline((const char *)si->cmdline_paddr, &p);
    p.base &= ~(PAGE - 1);
    p.fill &= ~(PAGE - 1);
    if (p.ws > p.fill)
        p.ws = p.fill;
    u64 pages = p.fill / PAGE;
    u64 ws_pages = p.ws / PAGE;
    u64 gen_addr = p.base + p.fill;
    u64 end = gen_addr + ((pages * 4 + PAGE - 1) & ~(PAGE - 1));
    puts("payload start base=");
    putx(p.base);
    puts(" fill=");
    putu(p.fill);
    puts(" ws=");
    putu(p.ws);
    puts(" seed=");
    putu(p.seed);
    putc('\n');
    if (p.base < (2UL << 20) || end > (4UL << 30) || !in_ram(si, p.base, end)) {
        puts("payload: region not in RAM\n");
        poweroff();
    }
    volatile u32 *gen = (volatile u32 *)gen_addr;
    for (u64 page = 0; page < pages; page++) {
        gen[page] = 0;
        write_page(&p, gen, page);
    }
    puts("filled pages=");
    putu(pages);
    putc('\n');

    u64 cursor = 0;
    for (u64 count = 1;; count++) {
        for (u64 b = 0; b < p.burst && ws_pages; b++) {
            gen[cursor]++;
            write_page(&p, gen, cursor);
            cursor = cursor + 1 == ws_pages ? 0 : cursor + 1;
        }
        puts("count=");
        putu(count);
        putc('\n');
        if (p.selfcheck && count % p.selfcheck == 0) {
            u64 bad = check_region(&p, gen, pages);
            if (bad) {
                puts("selfcheck=FAIL addr=");
                putx(bad);
            } else {
                puts("selfcheck=ok");
            }
            puts(" count=");
            putu(count);
            putc('\n');
        }
        if (p.fault && count == p.fault) {
            puts("fault count=");
            putu(count);
            putc('\n');
            triple_fault();
        }
        if (p.max && count >= p.max) {
            puts("poweroff count=");
            putu(count);
            putc('\n');
            poweroff();
        }
        for (u64 d = 0; d < p.delay; d++)
            __asm__ volatile("pause");
    }
}
