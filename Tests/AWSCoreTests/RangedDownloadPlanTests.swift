import AWSServices
import HTTPCurl
import Testing

/// How a large object is cut into pieces and what the pieces must add up to.
@Suite struct RangedDownloadPlanTests {
    typealias Plan = RangedDownloadPlan

    @Test func aSingleObjectIsCutIntoByteRangesCheckedWhole() {
        let plan = Plan(size: 10, checksum: "AAAAAA==", rangeSize: 4)
        #expect(plan.pieces == [.bytes(first: 0, last: 3), .bytes(first: 4, last: 7), .bytes(first: 8, last: 9)])
        #expect(plan.check == .wholeObject("AAAAAA=="))
        #expect(Plan(size: 8, checksum: nil, rangeSize: 4).pieces.count == 2)
        #expect(Plan(size: 8, checksum: nil, rangeSize: 4).check == .none)
    }

    /// A COMPOSITE checksum names the number of parts: the object comes part by part. A value that could not be
    /// S3's (more parts than bytes or than S3 allows) is taken as no part count.
    @Test func aCompositeChecksumMeansParts() {
        let plan = Plan(size: 100, checksum: "abcdef==-3", rangeSize: 40)
        #expect(plan.pieces == [.part(1), .part(2), .part(3)])
        #expect(plan.check == .composite("abcdef==-3"))
        let ranged = plan.inByteRanges(rangeSize: 40)
        #expect(ranged.pieces.count == 3 && ranged.check == .none)
        #expect(
            Plan(size: 2, checksum: "abcdef==-3", rangeSize: 1).pieces == [
                .bytes(first: 0, last: 0), .bytes(first: 1, last: 1),
            ])
        #expect(Plan(size: 100, checksum: "abcdef==-0", rangeSize: 50).pieces.count == 2)
    }

    func landed(_ data: [UInt8], cuts: [Int]) -> [Plan.Landed] {
        zip([0] + cuts, cuts + [data.count]).map { start, end in
            Plan.Landed(start: Int64(start), length: Int64(end - start), crc: CRC32C.checksum(Array(data[start..<end])))
        }
    }

    @Test func rangesThatAddUpToTheWholeChecksumPass() {
        let data = (0..<10).map { UInt8($0 * 7) }
        let plan = Plan(size: 10, checksum: CRC32C.base64(CRC32C.checksum(data)), rangeSize: 4)
        #expect(plan.verify(landed(data, cuts: [4, 8])) == nil)
        // One flipped byte in the middle range.
        var bad = data
        bad[5] ^= 1
        #expect(plan.verify(landed(bad, cuts: [4, 8]))?.contains("CRC-32C") == true)
    }

    @Test func partsThatMakeTheCompositePass() {
        let data = (0..<30).map { UInt8($0) }
        let parts = [data[0..<12], data[12..<24], data[24..<30]].map { CRC32C.checksum(Array($0)) }
        let plan = Plan(size: 30, checksum: CRC32C.composite(ofParts: parts), rangeSize: 12)
        #expect(plan.verify(landed(data, cuts: [12, 24])) == nil)
        // Parts of any size, as long as they follow each other.
        let uneven = [data[0..<5], data[5..<24], data[24..<30]].map { CRC32C.checksum(Array($0)) }
        #expect(
            Plan(size: 30, checksum: CRC32C.composite(ofParts: uneven), rangeSize: 12).verify(
                landed(data, cuts: [5, 24])) == nil)
        // A wrong part checksum.
        var wrong = landed(data, cuts: [12, 24])
        wrong[1].crc ^= 0x100
        #expect(plan.verify(wrong)?.contains("composite") == true)
    }

    /// Pieces that overlap, leave a gap, stop short or are not the bytes asked for are refused before any checksum.
    @Test func piecesThatDoNotTileTheObjectAreRefused() {
        let data = [UInt8](repeating: 1, count: 30)
        let composite = Plan(size: 30, checksum: "AAAAAA==-3", rangeSize: 10)
        let gap = [
            Plan.Landed(start: 0, length: 10, crc: 0), .init(start: 11, length: 9, crc: 0),
            .init(start: 20, length: 10, crc: 0),
        ]
        #expect(composite.verify(gap)?.contains("end to end") == true)
        let short = [
            Plan.Landed(start: 0, length: 10, crc: 0), .init(start: 10, length: 10, crc: 0),
            .init(start: 20, length: 9, crc: 0),
        ]
        #expect(composite.verify(short)?.contains("29 bytes of 30") == true)
        #expect(composite.verify(Array(short.prefix(2)))?.contains("2 pieces") == true)
        let ranges = Plan(size: 30, checksum: nil, rangeSize: 10)
        var shifted = landed(data, cuts: [10, 20])
        shifted[1].start = 9
        #expect(ranges.verify(shifted)?.contains("asked for bytes 10-19") == true)
        #expect(ranges.verify(landed(data, cuts: [10, 20])) == nil)
    }
}
