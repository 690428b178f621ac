import Foundation

public enum TokenizerError: Error, Equatable, LocalizedError {
    case unreadable(file: String, reason: String)
    case invalidVocabulary(file: String, reason: String)
    case noMerges(file: String)
    case missingToken(String)

    public var errorDescription: String? {
        switch self {
        case let .unreadable(file, reason): return "Cannot read tokenizer file \(file): \(reason)"
        case let .invalidVocabulary(file, reason): return "\(file) is not a CLIP vocabulary (token -> id JSON): \(reason)"
        case let .noMerges(file): return "\(file) holds no BPE merges (expected lines \"a b\" after \"#version\")"
        case let .missingToken(token): return "the vocabulary has no \"\(token)\" token"
        }
    }
}

/// CLIP's byte-level BPE tokenizer, built from `vocab.json` and `merges.txt`.
///
/// It reproduces transformers' `CLIPTokenizer` (the tokenizers-backed one, transformers 5):
/// 1. normalize: Unicode NFC, every run of whitespace becomes one space, lowercase (per scalar,
///    no locale or context rules);
/// 2. split with CLIP's pattern
///    `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
///    (whitespace between matches is dropped);
/// 3. map each piece's UTF-8 bytes to GPT-2's printable byte characters, mark the last symbol with
///    `</w>`, and merge pairs by merge rank, lowest first;
/// 4. look the symbols up in the vocabulary (unknown symbols become the unknown token,
///    `<|endoftext|>`), keep at most `maxLength - 2` ids, add bos/eos and pad to `maxLength`.
public final class ClipTokenizer {
    public static let startOfText = "<|startoftext|>"
    public static let endOfText = "<|endoftext|>"
    static let pattern = #"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"#

    public let maxLength: Int
    public let bosTokenId: Int
    public let eosTokenId: Int
    public let padTokenId: Int
    public let unknownTokenId: Int

    private let vocabulary: [String: Int]
    /// "left right" -> rank (the line number among the merges, 0-based).
    private let mergeRanks: [String: Int]
    /// Byte value -> its printable stand-in (GPT-2's bytes_to_unicode).
    private let byteEncoder: [String]
    private let splitter: NSRegularExpression

    /// - Parameters:
    ///   - vocabulary: token -> id, as in `vocab.json`.
    ///   - merges: the lines of `merges.txt`; a `#version` line and blank lines are skipped.
    public init(vocabulary: [String: Int], merges: [String], bosTokenId: Int, eosTokenId: Int, padTokenId: Int,
                maxLength: Int = 77) throws {
        var ranks: [String: Int] = [:]
        ranks.reserveCapacity(merges.count)
        for rawLine in merges {
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#version") { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 2 else { continue }
            let key = String(parts[0]) + " " + String(parts[1])
            if ranks[key] == nil { ranks[key] = ranks.count }
        }
        guard !ranks.isEmpty else { throw TokenizerError.noMerges(file: "merges.txt") }
        self.vocabulary = vocabulary
        self.mergeRanks = ranks
        self.bosTokenId = bosTokenId
        self.eosTokenId = eosTokenId
        self.padTokenId = padTokenId
        self.unknownTokenId = vocabulary[ClipTokenizer.endOfText] ?? eosTokenId
        self.maxLength = maxLength
        self.byteEncoder = ClipTokenizer.makeByteEncoder()
        self.splitter = try NSRegularExpression(pattern: ClipTokenizer.pattern, options: [])
    }

    /// Loads `vocab.json` and `merges.txt` from disk.
    public convenience init(vocabURL: URL, mergesURL: URL, bosTokenId: Int, eosTokenId: Int, padTokenId: Int,
                            maxLength: Int = 77) throws {
        let vocabData: Data
        do {
            vocabData = try Data(contentsOf: vocabURL)
        } catch {
            throw TokenizerError.unreadable(file: vocabURL.lastPathComponent, reason: error.localizedDescription)
        }
        let vocabulary: [String: Int]
        do {
            vocabulary = try JSONDecoder().decode([String: Int].self, from: vocabData)
        } catch {
            throw TokenizerError.invalidVocabulary(file: vocabURL.lastPathComponent, reason: error.localizedDescription)
        }
        let mergesText: String
        do {
            mergesText = try String(contentsOf: mergesURL, encoding: .utf8)
        } catch {
            throw TokenizerError.unreadable(file: mergesURL.lastPathComponent, reason: error.localizedDescription)
        }
        // components(separatedBy: .newlines) splits "\r\n" too (leaving empty lines, which are skipped);
        // String.split(separator: "\n") would not, since "\r\n" is one Character.
        let lines = mergesText.components(separatedBy: .newlines)
        try self.init(vocabulary: vocabulary, merges: lines, bosTokenId: bosTokenId, eosTokenId: eosTokenId,
                      padTokenId: padTokenId, maxLength: maxLength)
    }

    /// Builds the tokenizer a manifest describes; paths in the manifest are relative to `folder`.
    public convenience init(manifest: Manifest, folder: URL) throws {
        let t = manifest.pipeline.tokenizer
        try self.init(vocabURL: folder.appendingPathComponent(t.vocab),
                      mergesURL: folder.appendingPathComponent(t.merges),
                      bosTokenId: t.bosTokenId, eosTokenId: t.eosTokenId, padTokenId: t.padTokenId,
                      maxLength: manifest.pipeline.textMaxLength)
    }

    /// `maxLength` ids: bos, the prompt's ids (truncated to maxLength - 2), eos, then padding.
    public func encode(_ text: String) -> [Int] {
        var ids = tokenize(text)
        if ids.count > maxLength - 2 { ids = Array(ids.prefix(maxLength - 2)) }
        var out = [bosTokenId]
        out.append(contentsOf: ids)
        out.append(eosTokenId)
        while out.count < maxLength { out.append(padTokenId) }
        return out
    }

    /// The ids of `text` without bos, eos, truncation or padding.
    public func tokenize(_ text: String) -> [Int] {
        let normalized = ClipTokenizer.normalize(text)
        let nsText = normalized as NSString
        let matches = splitter.matches(in: normalized, options: [], range: NSRange(location: 0, length: nsText.length))
        var ids: [Int] = []
        for match in matches {
            let piece = nsText.substring(with: match.range)
            if piece == ClipTokenizer.startOfText || piece == ClipTokenizer.endOfText {
                ids.append(vocabulary[piece] ?? unknownTokenId)
                continue
            }
            for symbol in bpe(Array(piece.utf8)) {
                ids.append(vocabulary[symbol] ?? unknownTokenId)
            }
        }
        return ids
    }

    /// NFC, whitespace runs -> " ", lowercase.
    public static func normalize(_ text: String) -> String {
        let nfc = text.precomposedStringWithCanonicalMapping
        let space: Unicode.Scalar = " "
        var out = String.UnicodeScalarView()
        var inWhitespace = false
        for scalar in nfc.unicodeScalars {
            if scalar.properties.isWhitespace {
                if !inWhitespace { out.append(space) }
                inWhitespace = true
            } else {
                inWhitespace = false
                out.append(contentsOf: scalar.properties.lowercaseMapping.unicodeScalars)
            }
        }
        return String(out)
    }

    /// Byte-pair encoding of one piece, given as UTF-8 bytes.
    func bpe(_ bytes: [UInt8]) -> [String] {
        guard !bytes.isEmpty else { return [] }
        var word = bytes.map { byteEncoder[Int($0)] }
        word[word.count - 1] += "</w>"
        while word.count > 1 {
            var bestRank = Int.max
            var bestIndex = -1
            for i in 0 ..< word.count - 1 {
                if let rank = mergeRanks[word[i] + " " + word[i + 1]], rank < bestRank {
                    bestRank = rank
                    bestIndex = i
                }
            }
            if bestIndex < 0 { break }
            let left = word[bestIndex]
            let right = word[bestIndex + 1]
            // Merge every non-overlapping occurrence of (left, right), left to right.
            var merged: [String] = []
            merged.reserveCapacity(word.count)
            var i = 0
            while i < word.count {
                if i < word.count - 1, word[i] == left, word[i + 1] == right {
                    merged.append(left + right)
                    i += 2
                } else {
                    merged.append(word[i])
                    i += 1
                }
            }
            word = merged
        }
        return word
    }

    /// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 onwards.
    static func makeByteEncoder() -> [String] {
        var printable: [Int] = Array(0x21 ... 0x7E) + Array(0xA1 ... 0xAC) + Array(0xAE ... 0xFF)
        var codePoints = printable
        var extra = 0
        for b in 0 ..< 256 where !printable.contains(b) {
            printable.append(b)
            codePoints.append(256 + extra)
            extra += 1
        }
        var table = [String](repeating: "", count: 256)
        for (b, c) in zip(printable, codePoints) {
            table[b] = String(Character(Unicode.Scalar(UInt32(c))!))
        }
        return table
    }
}
