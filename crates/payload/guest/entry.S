/*
 * PVH entry of the livemig guest payload.
 *
 * The PVH boot protocol (Xen's, also used by KVM VMMs and QEMU) enters the kernel at the
 * address of the XEN_ELFNOTE_PHYS32_ENTRY note in 32-bit protected mode, paging off, flat
 * 4 GiB segments, %ebx = guest-physical address of struct hvm_start_info.
 *
 * This stub: loads its own GDT, identity-maps the first 4 GiB with 2 MiB pages (static page
 * tables in .data), enables PAE + long mode + paging, far-jumps to 64-bit code, sets up a stack
 * and calls payload_main(start_info). Interrupts stay disabled for the whole run.
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18

    .section .note.pvh, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start32           /* desc: 32-bit physical entry address */
    .balign 4

    .section .text.start, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi              /* keep start_info across the mode switch */
    lgdt gdt_ptr
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax              /* CR4.PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx       /* EFER */
    rdmsr
    or $0x100, %eax             /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        /* CR0.PG | CR0.PE */
    mov %eax, %cr0
    ljmp $0x08, $start64

    .code64
start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    lea stack_top(%rip), %rsp
    mov %esi, %edi              /* payload_main(start_info_paddr) */
    call payload_main
1:  cli
    hlt
    jmp 1b

    .section .data
    .balign 16
gdt:
    .quad 0                     /* null */
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff    /* 0x10: flat data */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt

    .balign 4096
pml4:
    .quad pdpt + 0x3            /* present | writable */
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 0x3
    .quad pd + 0x1000 + 0x3
    .quad pd + 0x2000 + 0x3
    .quad pd + 0x3000 + 0x3
    .fill 508, 8, 0
pd:                             /* 2048 x 2 MiB = 4 GiB, present | writable | huge */
    .set addr, 0
    .rept 2048
    .quad addr + 0x83
    .set addr, addr + 0x200000
    .endr

    .section .bss
    .balign 16
stack:
    .skip 16384
stack_top:
