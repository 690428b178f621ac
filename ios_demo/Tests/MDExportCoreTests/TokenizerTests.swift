import XCTest
@testable import MDExportCore

private struct TokenizerGoldens: Decodable {
    struct Case: Decodable {
        let prompt: String
        let inputIds: [Int]
        let untruncatedLength: Int

        enum CodingKeys: String, CodingKey {
            case prompt
            case inputIds = "input_ids"
            case untruncatedLength = "untruncated_length"
        }
    }

    let maxLength: Int
    let bosTokenId: Int
    let eosTokenId: Int
    let padTokenId: Int
    let cases: [Case]

    enum CodingKeys: String, CodingKey {
        case maxLength = "max_length"
        case bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id"
        case padTokenId = "pad_token_id"
        case cases
    }
}

final class TokenizerTests: XCTestCase {
    func testMatchesTransformersGoldens() throws {
        let goldens = try Fixtures.decode(TokenizerGoldens.self, from: "tokenizer_goldens.json")
        let tokenizer = try Fixtures.tokenizer()
        XCTAssertEqual(goldens.maxLength, tokenizer.maxLength)
        XCTAssertEqual(goldens.padTokenId, tokenizer.padTokenId)
        XCTAssertGreaterThanOrEqual(goldens.cases.count, 20)
        for c in goldens.cases {
            XCTAssertEqual(tokenizer.encode(c.prompt), c.inputIds, "prompt: \(c.prompt.debugDescription)")
            // untruncated_length counts bos and eos.
            XCTAssertEqual(tokenizer.tokenize(c.prompt).count + 2, c.untruncatedLength,
                           "untruncated length of \(c.prompt.debugDescription)")
        }
    }

    func testEmptyPromptIsBosEosThenPadding() throws {
        let ids = try Fixtures.tokenizer().encode("")
        XCTAssertEqual(ids.count, 77)
        XCTAssertEqual(Array(ids.prefix(2)), [49406, 49407])
        XCTAssertTrue(ids.dropFirst(2).allSatisfy { $0 == 49407 })
    }

    func testTruncatesToMaxLengthKeepingEos() throws {
        let ids = try Fixtures.tokenizer().encode(Array(repeating: "word", count: 200).joined(separator: " "))
        XCTAssertEqual(ids.count, 77)
        XCTAssertEqual(ids.first, 49406)
        XCTAssertEqual(ids.last, 49407)
        XCTAssertEqual(ids[75], ids[1])
    }

    func testPadIdComesFromTheCaller() throws {
        let folder = Fixtures.repoTokenizerFolder
        let tokenizer = try ClipTokenizer(vocabURL: folder.appendingPathComponent("vocab.json"),
                                          mergesURL: folder.appendingPathComponent("merges.txt"),
                                          bosTokenId: 49406, eosTokenId: 49407, padTokenId: 0, maxLength: 10)
        XCTAssertEqual(tokenizer.encode("a cat"), [49406, 320, 2368, 49407, 0, 0, 0, 0, 0, 0])
    }

    func testNormalization() {
        XCTAssertEqual(ClipTokenizer.normalize("  A\tPhoto\n\nOF  "), " a photo of ")
        // NFC: "e" + combining acute becomes one scalar.
        XCTAssertEqual(ClipTokenizer.normalize("Cafe\u{301}").unicodeScalars.count, 4)
    }

    func testByteEncoderIsABijection() {
        let table = ClipTokenizer.makeByteEncoder()
        XCTAssertEqual(table.count, 256)
        XCTAssertEqual(Set(table).count, 256)
        XCTAssertEqual(table[Int(UInt8(ascii: "a"))], "a")
        XCTAssertEqual(table[0x20], "\u{120}")  // space -> "Ġ"
    }

    func testMissingFilesAreNamed() {
        let missing = URL(fileURLWithPath: "/nonexistent/vocab.json")
        XCTAssertThrowsError(try ClipTokenizer(vocabURL: missing, mergesURL: missing, bosTokenId: 0, eosTokenId: 1,
                                               padTokenId: 1)) { error in
            XCTAssertTrue((error as? LocalizedError)?.errorDescription?.contains("vocab.json") ?? false)
        }
    }
}
