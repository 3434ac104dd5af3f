//! Offsets of kernel struct fields, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF programs are compiled without CO-RE relocations, so a field they read from a
//! kernel struct (`task_struct.exit_code`) is located here and handed to them in `CONFIG`.
//! Only what that needs is parsed: the header, the string section, and enough of each type
//! to step over it and read struct members.

/// BTF kinds (`BTF_KIND_*` in the kernel's `include/uapi/linux/btf.h`).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

const MAGIC: u16 = 0xeb9f;

/// One parsed type: its kind, name and (for structs and unions) members as
/// (name offset, type id, bit offset).
struct Ty {
    kind: u32,
    name_off: u32,
    members: Vec<(u32, u32, u32)>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn str_at(strings: &[u8], off: u32) -> Option<&[u8]> {
    let s = strings.get(off as usize..)?;
    let end = s.iter().position(|c| *c == 0)?;
    Some(&s[..end])
}

/// The byte offset of `field` in `struct name` (looked for through anonymous struct and
/// union members too), or `None` when the BTF does not have it.
pub fn member_offset(btf: &[u8], name: &str, field: &str) -> Option<u32> {
    if btf.len() < 24 || u16::from_le_bytes([btf[0], btf[1]]) != MAGIC {
        return None;
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let (type_off, type_len) = (u32_at(btf, 8)? as usize, u32_at(btf, 12)? as usize);
    let (str_off, str_len) = (u32_at(btf, 16)? as usize, u32_at(btf, 20)? as usize);
    let types = btf.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
    let strings = btf.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
    // Type ids start at 1; index 0 is `void`.
    let mut all = vec![Ty {
        kind: 0,
        name_off: 0,
        members: Vec::new(),
    }];
    let mut at = 0;
    while at + 12 <= types.len() {
        let name_off = u32_at(types, at)?;
        let info = u32_at(types, at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        at += 12;
        let mut members = Vec::new();
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION => {
                for i in 0..vlen {
                    let m = at + i * 12;
                    let offset = u32_at(types, m + 8)?;
                    // With kind_flag, the top 8 bits are a bitfield's size.
                    let bits = if kind_flag {
                        offset & 0xff_ffff
                    } else {
                        offset
                    };
                    members.push((u32_at(types, m)?, u32_at(types, m + 4)?, bits));
                }
                vlen * 12
            }
            KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
            KIND_DATASEC | KIND_ENUM64 => vlen * 12,
            _ => 0,
        };
        at += extra;
        all.push(Ty {
            kind,
            name_off,
            members,
        });
    }
    let id = all.iter().position(|t| {
        t.kind == KIND_STRUCT && str_at(strings, t.name_off) == Some(name.as_bytes())
    })?;
    find_in(&all, strings, id, field.as_bytes(), 0).map(|bits| bits / 8)
}

fn find_in(all: &[Ty], strings: &[u8], id: usize, field: &[u8], depth: u32) -> Option<u32> {
    if depth > 8 {
        return None;
    }
    let ty = all.get(id)?;
    for &(name_off, type_id, bits) in &ty.members {
        if name_off != 0 {
            if str_at(strings, name_off) == Some(field) {
                return Some(bits);
            }
            continue;
        }
        // An anonymous struct or union: its members are the outer struct's.
        let inner = all.get(type_id as usize)?;
        if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
            && let Some(b) = find_in(all, strings, type_id as usize, field, depth + 1)
        {
            return Some(bits + b);
        }
    }
    None
}

/// `task_struct.exit_code` in the running kernel.
pub fn task_exit_code() -> Option<u32> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
    member_offset(&btf, "task_struct", "exit_code")
}

/// `task_struct.group_leader`, `.start_boottime`, `.self_exec_id` and `.parent_exec_id` in
/// the running kernel: a process's start and whether it exec'd, read at its exit.
pub fn task_leader_facts() -> Option<[u32; 4]> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
    Some([
        member_offset(&btf, "task_struct", "group_leader")?,
        member_offset(&btf, "task_struct", "start_boottime")?,
        member_offset(&btf, "task_struct", "self_exec_id")?,
        member_offset(&btf, "task_struct", "parent_exec_id")?,
    ])
}

/// `task_struct.mm`, `mm_struct.arg_start` and `mm_struct.arg_end` in the running kernel:
/// where a process's arguments are.
pub fn process_args() -> Option<(u32, u32, u32)> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
    Some((
        member_offset(&btf, "task_struct", "mm")?,
        member_offset(&btf, "mm_struct", "arg_start")?,
        member_offset(&btf, "mm_struct", "arg_end")?,
    ))
}

/// The fields the kernel's directory walk of a file change reads (`PathOffsets`), in the
/// running kernel; `None` when one is not found.
pub fn path_walk() -> Option<agentwatch_ebpf::PathOffsets> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
    let m = |s: &str, f: &str| member_offset(&btf, s, f);
    Some(agentwatch_ebpf::PathOffsets {
        ok: 1,
        task_fs: m("task_struct", "fs")?,
        task_files: m("task_struct", "files")?,
        fs_root: m("fs_struct", "root")?,
        fs_pwd: m("fs_struct", "pwd")?,
        path_mnt: m("path", "mnt")?,
        path_dentry: m("path", "dentry")?,
        dentry_parent: m("dentry", "d_parent")?,
        dentry_name: m("dentry", "d_name")? + m("qstr", "name")?,
        vfsmount_root: m("vfsmount", "mnt_root")?,
        mount_mnt: m("mount", "mnt")?,
        mount_parent: m("mount", "mnt_parent")?,
        mount_mountpoint: m("mount", "mnt_mountpoint")?,
        files_fdt: m("files_struct", "fdt")?,
        fdt_max_fds: m("fdtable", "max_fds")?,
        fdt_fd: m("fdtable", "fd")?,
        file_path: m("file", "f_path")?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF: `int`, then `struct s { int a; union { int x; int exit_code; }; }`
    /// with the union at byte 8.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0x\0exit_code\0";
        let name = |s: &str| {
            let s = s.as_bytes();
            strings
                .windows(s.len() + 2)
                .position(|w| w[0] == 0 && &w[1..=s.len()] == s && w[s.len() + 1] == 0)
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |v: &[u32]| {
            v.iter()
                .for_each(|x| types.extend_from_slice(&x.to_le_bytes()))
        };
        // 1: int (4 bytes)
        push(&[name("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous union { int x; int exit_code; }
        push(&[0, KIND_UNION << 24 | 2, 4]);
        push(&[name("x"), 1, 0]);
        push(&[name("exit_code"), 1, 0]);
        // 3: struct s { int a; <union> at byte 8 }
        push(&[name("s"), KIND_STRUCT << 24 | 2, 12]);
        push(&[name("a"), 1, 0]);
        push(&[0, 2, 64]);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&types);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn member_offsets_are_found_through_anonymous_unions() {
        let b = sample();
        assert_eq!(member_offset(&b, "s", "a"), Some(0));
        assert_eq!(member_offset(&b, "s", "exit_code"), Some(8));
        assert_eq!(member_offset(&b, "s", "nope"), None);
        assert_eq!(member_offset(&b, "t", "a"), None);
        // Truncated or foreign bytes are no answer, not a panic.
        for n in 0..b.len() {
            let _ = member_offset(&b[..n], "s", "exit_code");
        }
        assert_eq!(
            member_offset(b"not btf at all, not btf at all", "s", "a"),
            None
        );
    }

    #[test]
    fn the_running_kernel_has_task_struct_exit_code() {
        // The daemon needs BTF anyway (its programs are BTF tracepoints).
        let off = task_exit_code().expect("task_struct.exit_code in vmlinux BTF");
        assert!(off > 0 && off < 16384, "{off}");
    }
}
