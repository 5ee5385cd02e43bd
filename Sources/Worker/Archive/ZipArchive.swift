@preconcurrency import Glibc

/// A zip archive, read from its central directory (zip64 included), each entry's data checked against its CRC-32
/// and size. Stored and deflated entries; a data descriptor after an entry changes nothing here, since sizes and
/// CRCs come from the central directory. Encrypted entries and other methods are refused.
struct ZipArchive {
    typealias Refusal = Unpacker.Refusal

    struct Entry {
        var name: String
        var method: UInt16
        var flags: UInt16
        var crc: UInt32
        var compressedSize: Int64
        var size: Int64
        var localHeader: Int64
        /// The Unix mode from the external attributes, when the archive was made on Unix.
        var unixMode: UInt32?
    }

    let fd: Int32
    let fileSize: Int64

    init(fd: Int32) throws(Refusal) {
        self.fd = fd
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Refusal(description: "the archive cannot be read") }
        fileSize = Int64(st.st_size)
    }

    func read(_ offset: Int64, _ count: Int) throws(Refusal) -> [UInt8] {
        guard offset >= 0, count >= 0, offset + Int64(count) <= fileSize else {
            throw Refusal(description: "it is not a zip archive, or it is truncated")
        }
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        guard got == count else { throw Refusal(description: "the archive cannot be read") }
        return bytes
    }

    /// Every entry of the central directory.
    func entries() throws(Refusal) -> [Entry] {
        // The end-of-central-directory record is in the last 64 KiB + 22 bytes (its comment is at most 64 KiB).
        let tailSize = Int(min(fileSize, 65_557))
        guard tailSize >= 22 else { throw Refusal(description: "it is not a zip archive (too short)") }
        let tail = try read(fileSize - Int64(tailSize), tailSize)
        guard let eocd = (0...max(0, tailSize - 22)).reversed().first(where: { tail.u32($0) == 0x0605_4b50 }) else {
            throw Refusal(description: "it is not a zip archive (no end of central directory)")
        }
        var count = Int64(tail.u16(eocd + 10))
        var size = Int64(tail.u32(eocd + 12))
        var offset = Int64(tail.u32(eocd + 16))
        if count == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
            // zip64: a locator just before points at the zip64 end record.
            let locatorAt = fileSize - Int64(tailSize) + Int64(eocd) - 20
            let locator = try read(locatorAt, 20)
            guard locator.u32(0) == 0x0706_4b50 else {
                throw Refusal(description: "a zip64 archive without its locator")
            }
            let record = try read(try Self.bounded(locator.u64(8)), 56)
            guard record.u32(0) == 0x0606_4b50 else {
                throw Refusal(description: "a zip64 archive without its end record")
            }
            count = try Self.bounded(record.u64(32))
            size = try Self.bounded(record.u64(40))
            offset = try Self.bounded(record.u64(48))
        }
        guard size <= 256 << 20 else { throw Refusal(description: "its central directory is over 256 MiB") }
        let directory = try read(offset, Int(size))
        var entries: [Entry] = []
        var at = 0
        for _ in 0..<count {
            guard at + 46 <= directory.count, directory.u32(at) == 0x0201_4b50 else {
                throw Refusal(description: "its central directory is corrupt")
            }
            let madeBy = directory.u16(at + 4) >> 8
            let nameLength = Int(directory.u16(at + 28)), extraLength = Int(directory.u16(at + 30))
            let commentLength = Int(directory.u16(at + 32))
            guard at + 46 + nameLength + extraLength + commentLength <= directory.count else {
                throw Refusal(description: "its central directory is corrupt")
            }
            let nameBytes = Array(directory[(at + 46)..<(at + 46 + nameLength)])
            var entry = Entry(
                name: String(validating: nameBytes, as: UTF8.self) ?? String(decoding: nameBytes, as: UTF8.self),
                method: directory.u16(at + 10), flags: directory.u16(at + 8), crc: directory.u32(at + 16),
                compressedSize: Int64(directory.u32(at + 20)), size: Int64(directory.u32(at + 24)),
                localHeader: Int64(directory.u32(at + 42)),
                unixMode: madeBy == 3 ? directory.u32(at + 38) >> 16 : nil)
            // zip64 extra field: the 0xFFFFFFFF values, in this order, follow in it.
            var extra = at + 46 + nameLength
            let extraEnd = extra + extraLength
            while extra + 4 <= extraEnd {
                let id = directory.u16(extra), length = Int(directory.u16(extra + 2))
                if id == 0x0001 {
                    var field = extra + 4
                    if entry.size == 0xFFFF_FFFF, field + 8 <= extraEnd {
                        entry.size = try Self.bounded(directory.u64(field))
                        field += 8
                    }
                    if entry.compressedSize == 0xFFFF_FFFF, field + 8 <= extraEnd {
                        entry.compressedSize = try Self.bounded(directory.u64(field))
                        field += 8
                    }
                    if entry.localHeader == 0xFFFF_FFFF, field + 8 <= extraEnd {
                        entry.localHeader = try Self.bounded(directory.u64(field))
                    }
                }
                extra += 4 + length
            }
            entries.append(entry)
            at += 46 + nameLength + extraLength + commentLength
        }
        return entries
    }

    /// A zip64 size or offset, refused past 2^60 (an exbibyte): sums of two or three of them cannot overflow.
    static func bounded(_ value: UInt64) throws(Refusal) -> Int64 {
        guard value <= 1 << 60 else { throw Refusal(description: "its sizes or offsets are corrupt") }
        return Int64(value)
    }

    /// Unpacks every entry through `unpacker`.

    func unpack(into unpacker: Unpacker) throws(Refusal) {
        for entry in try entries() {
            try unpack(entry, into: unpacker)
        }
    }

    private func unpack(_ entry: Entry, into unpacker: Unpacker) throws(Refusal) {
        let name = entry.name
        guard entry.flags & 1 == 0 else { throw Refusal(description: "'\(name)' is encrypted") }
        let type = entry.unixMode.map { $0 & UInt32(S_IFMT) }
        let kind: Unpacker.Kind
        switch type {
        case UInt32(S_IFLNK)?:
            let target = try contents(entry, limit: 4096)
            kind = .symlink(target: String(decoding: target, as: UTF8.self))
        case UInt32(S_IFDIR)?:
            kind = .directory
        case UInt32(S_IFREG)?, 0?, nil:
            kind = name.hasSuffix("/") ? .directory : .file
        case UInt32(S_IFCHR)?, UInt32(S_IFBLK)?:
            kind = .unsupported("a device node")
        case UInt32(S_IFIFO)?:
            kind = .unsupported("a FIFO")
        default:
            kind = .unsupported("not a file, a folder or a link")
        }
        try unpacker.add(name, kind: kind) { (out: Int32) throws(Refusal) in
            try copy(entry, to: out, unpacker: unpacker)
        }
    }

    /// Where an entry's data starts: after its local header's name and extra field.
    private func dataOffset(_ entry: Entry) throws(Refusal) -> Int64 {
        let header = try read(entry.localHeader, 30)
        guard header.u32(0) == 0x0403_4b50 else { throw Refusal(description: "'\(entry.name)' has no local header") }
        return entry.localHeader + 30 + Int64(header.u16(26)) + Int64(header.u16(28))
    }

    /// Streams an entry's data into `out`, checking its size and CRC-32.
    private func copy(_ entry: Entry, to out: Int32, unpacker: Unpacker) throws(Refusal) {
        try stream(entry) { (chunk: UnsafeRawBufferPointer) throws(Refusal) in
            try unpacker.count(chunk.count, entry: entry.name)
            var written = 0
            while written < chunk.count {
                let n = Glibc.write(out, chunk.baseAddress! + written, chunk.count - written)
                guard n > 0 else {
                    throw Refusal(description: "cannot write '\(entry.name)': \(String(cString: strerror(errno)))")
                }
                written += n
            }
        }
    }

    /// A small entry's content (a link's target).
    private func contents(_ entry: Entry, limit: Int) throws(Refusal) -> [UInt8] {
        var bytes: [UInt8] = []
        try stream(entry) { (chunk: UnsafeRawBufferPointer) throws(Refusal) in
            bytes += chunk
            guard bytes.count <= limit else {
                throw Refusal(description: "'\(entry.name)' is a link over \(limit) bytes")
            }
        }
        return bytes
    }

    private func stream(_ entry: Entry, _ sink: (UnsafeRawBufferPointer) throws(Refusal) -> Void) throws(Refusal) {
        let start = try dataOffset(entry)
        guard start + entry.compressedSize <= fileSize else {
            throw Refusal(description: "'\(entry.name)' is truncated")
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 16)
        defer { buffer.deallocate() }
        var crc: UInt32 = 0
        var total: Int64 = 0
        switch entry.method {
        case 0:
            var position = start
            while position < start + entry.compressedSize {
                let want = Int(min(Int64(buffer.count), start + entry.compressedSize - position))
                let got = pread(fd, buffer.baseAddress, want, off_t(position))
                guard got > 0 else { throw Refusal(description: "'\(entry.name)' cannot be read") }
                let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<got])
                crc = zipCRC32(crc, chunk.baseAddress!, got)
                total += Int64(got)
                try sink(chunk)
                position += Int64(got)
            }
        case 8:
            let inflater: Inflater
            do {
                inflater = try Inflater(.raw, fd: fd, offset: start, end: start + entry.compressedSize)
            } catch {
                throw Refusal(description: "'\(entry.name)': \(error)")
            }
            while true {
                let got: Int
                do { got = try inflater.read(into: buffer.baseAddress!, count: buffer.count) } catch {
                    throw Refusal(description: "'\(entry.name)': \(error)")
                }
                if got == 0 { break }
                let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<got])
                crc = zipCRC32(crc, chunk.baseAddress!, got)
                total += Int64(got)
                guard total <= entry.size else { throw Refusal(description: "'\(entry.name)' is longer than it says") }
                try sink(chunk)
            }
        default:
            throw Refusal(
                description: "'\(entry.name)' uses compression method \(entry.method) (only stored and deflate)")
        }
        guard total == entry.size, crc == entry.crc else {
            throw Refusal(description: "'\(entry.name)' is corrupt (its size or CRC-32 does not match)")
        }
    }
}

extension Array where Element == UInt8 {
    /// Little-endian integers at a byte offset.
    func u16(_ at: Int) -> UInt16 { UInt16(self[at]) | UInt16(self[at + 1]) << 8 }
    func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }
    func u64(_ at: Int) -> UInt64 { UInt64(u32(at)) | UInt64(u32(at + 4)) << 32 }
}
