@preconcurrency import Glibc

/// A gzip-compressed tar archive (ustar, with pax and GNU long-name headers), read as one stream.
struct TarArchive {
    typealias Refusal = Unpacker.Refusal

    let fd: Int32

    /// Unpacks every entry through `unpacker`.
    func unpack(into unpacker: Unpacker) throws(Refusal) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Refusal(description: "the archive cannot be read") }
        let stream: Inflater
        do { stream = try Inflater(.gzip, fd: fd, offset: 0, end: Int64(st.st_size)) } catch {
            throw Refusal(description: "it is not a gzip file: \(error)")
        }
        let reader = BlockReader(stream: stream)
        var longName: String?
        var longLink: String?
        var pax: [String: String] = [:]
        while true {
            guard let header = try reader.block() else { throw Refusal(description: "it ends without its end blocks") }
            if header.allSatisfy({ $0 == 0 }) { return }  // the end (a second zero block follows)
            guard Self.checksumMatches(header) else {
                throw Refusal(description: "it is not a tar archive, or it is corrupt (a header's checksum)")
            }
            let type = header[156]
            let size = try Self.number(header[124..<136])
            var name = pax["path"] ?? longName ?? Self.headerName(header)
            let link = pax["linkpath"] ?? longLink ?? Self.string(header[157..<257])
            let length = Int64(pax["size"] ?? "") ?? size
            guard length >= 0 else { throw Refusal(description: "'\(name)' has a negative size") }
            switch type {
            case UInt8(ascii: "x"), UInt8(ascii: "g"), UInt8(ascii: "L"), UInt8(ascii: "K"):
                guard size <= 1 << 20 else { throw Refusal(description: "an extended header over 1 MiB") }
                let data = try reader.bytes(Int(size))
                switch type {
                case UInt8(ascii: "x"): pax = Self.paxRecords(data)
                case UInt8(ascii: "L"): longName = Self.string(data[...])
                case UInt8(ascii: "K"): longLink = Self.string(data[...])
                default: break  // a global header: nothing here needs it
                }
                continue
            default:
                break
            }
            pax = [:]
            longName = nil
            longLink = nil
            let kind: Unpacker.Kind
            switch type {
            case UInt8(ascii: "0"), 0, UInt8(ascii: "7"): kind = .file
            case UInt8(ascii: "5"): kind = .directory
            case UInt8(ascii: "2"): kind = .symlink(target: link)
            case UInt8(ascii: "1"): kind = .unsupported("a hard link")
            case UInt8(ascii: "3"), UInt8(ascii: "4"): kind = .unsupported("a device node")
            case UInt8(ascii: "6"): kind = .unsupported("a FIFO")
            default: kind = .unsupported("a tar entry of type '\(String(UnicodeScalar(type)))'")
            }
            if case .directory = kind, name.hasSuffix("/") { name.removeLast() }
            var written: Int64 = 0
            try unpacker.add(name, kind: kind) { (out: Int32) throws(Refusal) in
                try reader.copy(length, entry: name, to: out, unpacker: unpacker)
                written = length
            }
            // Whatever content the entry has and was not written (a folder's, a link's) is skipped.
            if written == 0 && length > 0 { _ = try reader.skip(length) }
            try reader.skipPadding(after: length)
        }
    }

    static func headerName(_ header: [UInt8]) -> String {
        let name = string(header[0..<100])
        let isUstar = header[257..<262].elementsEqual(Array("ustar".utf8))
        let prefix = isUstar ? string(header[345..<500]) : ""
        return prefix.isEmpty ? name : prefix + "/" + name
    }

    static func string(_ bytes: ArraySlice<UInt8>) -> String {
        let trimmed = bytes.prefix { $0 != 0 }
        return String(validating: trimmed, as: UTF8.self) ?? String(decoding: trimmed, as: UTF8.self)
    }

    /// An octal field, or base-256 (GNU) when its first byte has the high bit set.
    static func number(_ field: ArraySlice<UInt8>) throws(Refusal) -> Int64 {
        if let first = field.first, first & 0x80 != 0 {
            var value: Int64 = Int64(first & 0x7f)
            for byte in field.dropFirst() {
                guard value < Int64.max >> 8 else { throw Refusal(description: "a size too large") }
                value = value << 8 | Int64(byte)
            }
            return value
        }
        let digits = field.prefix { $0 != 0 && $0 != 0x20 }.drop { $0 == 0x20 }
        var value: Int64 = 0
        for digit in digits {
            guard digit >= 0x30, digit <= 0x37 else { throw Refusal(description: "a header field that is not octal") }
            value = value * 8 + Int64(digit - 0x30)
        }
        return value
    }

    static func checksumMatches(_ header: [UInt8]) -> Bool {
        guard let stored = try? number(header[148..<156]) else { return false }
        var sum: Int64 = 0
        for (index, byte) in header.enumerated() { sum += (148..<156).contains(index) ? 0x20 : Int64(byte) }
        return sum == stored
    }

    /// `length key=value\n` records.
    static func paxRecords(_ data: [UInt8]) -> [String: String] {
        var records: [String: String] = [:]
        var at = 0
        while at < data.count {
            // The record must hold its length, the space, and at least the closing newline after it.
            guard let space = data[at...].firstIndex(of: 0x20), let length = Int(string(data[at..<space])),
                length > 0, length <= data.count - at, space + 1 <= at + length - 1
            else { break }

            let record = data[(space + 1)..<(at + length - 1)]
            if let eq = record.firstIndex(of: UInt8(ascii: "=")) {
                records[string(record[..<eq])] = String(decoding: record[(eq + 1)...], as: UTF8.self)
            }
            at += length
        }
        return records
    }
}

/// The inflated stream in 512-byte blocks.
final class BlockReader {
    typealias Refusal = Unpacker.Refusal
    let stream: Inflater
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 16)

    init(stream: Inflater) { self.stream = stream }
    deinit { buffer.deallocate() }

    /// Exactly `count` bytes, or nil at a clean end before the first.
    func fill(_ target: UnsafeMutableRawPointer, _ count: Int) throws(Refusal) -> Bool {
        var got = 0
        while got < count {
            let n: Int
            do { n = try stream.read(into: target + got, count: count - got) } catch {
                throw Refusal(description: "\(error)")
            }
            if n == 0 {
                if got == 0 { return false }
                throw Refusal(description: "the archive ends in the middle of an entry")
            }
            got += n
        }
        return true
    }

    /// `count` bytes into a new array (false at a clean end before the first).
    private func fill(into data: inout [UInt8], _ count: Int) throws(Refusal) -> Bool {
        // withUnsafeMutableBytes rethrows untyped: the refusal is carried out of it as a result.
        let result: Result<Bool, Refusal> = data.withUnsafeMutableBytes { raw in
            do throws(Refusal) { return .success(try fill(raw.baseAddress!, count)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    func block() throws(Refusal) -> [UInt8]? {
        var header = [UInt8](repeating: 0, count: 512)
        return try fill(into: &header, 512) ? header : nil
    }

    func bytes(_ count: Int) throws(Refusal) -> [UInt8] {
        var data = [UInt8](repeating: 0, count: count)
        if count > 0 {
            guard try fill(into: &data, count) else {
                throw Refusal(description: "the archive ends in the middle of an entry")
            }
        }
        try skipPadding(after: Int64(count))
        return data
    }

    /// Copies `length` bytes to `out`.
    func copy(_ length: Int64, entry: String, to out: Int32, unpacker: Unpacker) throws(Refusal) {
        var left = length
        while left > 0 {
            let want = Int(min(Int64(buffer.count), left))
            guard try fill(buffer.baseAddress!, want) else { throw Refusal(description: "'\(entry)' is truncated") }
            try unpacker.count(want, entry: entry)
            var written = 0
            while written < want {
                let n = write(out, buffer.baseAddress! + written, want - written)
                guard n > 0 else {
                    throw Refusal(description: "cannot write '\(entry)': \(String(cString: strerror(errno)))")
                }
                written += n
            }
            left -= Int64(want)
        }
    }

    func skip(_ length: Int64) throws(Refusal) -> Int64 {
        var left = length
        while left > 0 {
            let want = Int(min(Int64(buffer.count), left))
            guard try fill(buffer.baseAddress!, want) else { throw Refusal(description: "the archive is truncated") }
            left -= Int64(want)
        }
        return length
    }

    /// Entries are padded to 512 bytes.
    func skipPadding(after length: Int64) throws(Refusal) {
        let padding = (512 - Int(length % 512)) % 512
        if padding > 0 { _ = try skip(Int64(padding)) }
    }
}
