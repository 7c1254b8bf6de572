"""Does a shared library carry a binary search table for its unwind info?  python scripts/unwind_table.py LIB.so

A C++ exception (and c10::Error's backtrace) finds each frame's FDE through the library's .eh_frame_hdr table.
When the linker cannot build that table (ld: "error in X(.eh_frame); no .eh_frame_hdr table will be created",
e.g. one object with an .eh_frame it cannot parse), libgcc falls back to a linear scan of .eh_frame, and a
malformed entry there crashes the process (SIGSEGV in linear_search_fdes) instead of raising. Prints the
header's fields; exits 0 with a table, 1 without, 2 when the file is not a 64-bit little-endian ELF.
"""

from __future__ import annotations

import struct
import sys

DW_EH_PE_OMIT = 0xFF


def sections(data: bytes) -> dict[str, tuple[int, int]]:
    """{name: (file offset, size)} of an ELF64 little-endian file's sections."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    str_off = headers[shstrndx][4]
    out = {}
    for name, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", str_off + name)
        out[data[str_off + name : end].decode()] = (offset, size)
    return out


def read_count(data: bytes, at: int, enc: int) -> int | None:
    """The fde_count field for the encodings linkers write (udata4/sdata4/udata8/sdata8), else None."""
    fmt = {0x03: "<I", 0x0B: "<i", 0x04: "<Q", 0x0C: "<q"}.get(enc & 0x0F)
    return struct.unpack_from(fmt, data, at)[0] if fmt else None


def main(path: str) -> int:
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        secs = sections(data)
    except (ValueError, struct.error) as e:
        print(f"{path}: {e}")
        return 2
    if ".eh_frame_hdr" not in secs:
        print(f"{path}: no .eh_frame_hdr section (eh_frame: {'.eh_frame' in secs})")
        return 1
    off, size = secs[".eh_frame_hdr"]
    version, ptr_enc, count_enc, table_enc = data[off : off + 4]
    # eh_frame_ptr is 4 bytes for the pcrel|sdata4 encoding every linker here writes; the count follows it.
    count = read_count(data, off + 8, count_enc) if (ptr_enc & 0x0F) == 0x0B else None
    ok = table_enc != DW_EH_PE_OMIT and count_enc != DW_EH_PE_OMIT and bool(count)
    print(
        f"{path}: .eh_frame_hdr {size} bytes, version {version}, table_enc 0x{table_enc:02x}, "
        f"fde_count {count} -> {'search table present' if ok else 'NO SEARCH TABLE (linear FDE scan)'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1]))
