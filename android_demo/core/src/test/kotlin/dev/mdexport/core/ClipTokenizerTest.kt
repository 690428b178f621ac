package dev.mdexport.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class ClipTokenizerTest {
    private val tok = TestSupport.realTokenizer
    private val golden = TestSupport.golden("tokenizer")

    @Test fun matchesTransformersOnAllGoldenPrompts() {
        val cases = golden.objects("cases")
        assertTrue("golden file has ${cases.size} cases", cases.size >= 20)
        val failures = ArrayList<String>()
        for (c in cases) {
            val prompt = c.string("prompt")
            val expected = c.intList("input_ids").toIntArray()
            val actual = tok.encode(prompt)
            if (!expected.contentEquals(actual)) {
                failures += "${'"'}$prompt${'"'}\n  expected ${expected.toList()}\n  actual   ${actual.toList()}"
            }
            // unpadded length = bos + tokens + eos, before truncation
            assertEquals("length of ${'"'}$prompt${'"'}", c.int("unpadded_length"), tok.tokenize(prompt).size + 2)
        }
        assertTrue(failures.joinToString("\n"), failures.isEmpty())
    }

    @Test fun layoutIsBosTokensEosPad() {
        val ids = tok.encode("a photo of a cat")
        assertEquals(77, ids.size)
        assertEquals(49406, ids[0])
        assertArrayEquals(intArrayOf(320, 1125, 539, 320, 2368), ids.copyOfRange(1, 6))
        assertEquals(49407, ids[6])
        assertTrue(ids.drop(7).all { it == 49407 })
    }

    @Test fun truncatesToMaxLengthKeepingEos() {
        val ids = tok.encode(List(100) { "cat" }.joinToString(" "))
        assertEquals(77, ids.size)
        assertEquals(49406, ids[0])
        assertTrue(ids.copyOfRange(1, 76).all { it == 2368 })
        assertEquals(49407, ids[76])
    }

    @Test fun padIdComesFromConfiguration() {
        val d = TestSupport.tokenizerDir()
        val zeroPad = ClipTokenizer.fromText(
            java.io.File(d, "vocab.json").readText(), java.io.File(d, "merges.txt").readText(), padId = 0, maxLength = 10
        )
        assertArrayEquals(intArrayOf(49406, 320, 2368, 49407, 0, 0, 0, 0, 0, 0), zeroPad.encode("a cat"))
    }

    @Test fun normalizationRules() {
        assertEquals(" a b c ", ClipTokenizer.normalize("\tA\u00a0\u00a0b\n\u3000C  "))
        assertEquals("\u00e9", ClipTokenizer.normalize("E\u0301"))
        assertEquals("οδοσ", ClipTokenizer.normalize("ΟΔΟΣ")) // no final-sigma rule
    }

    @Test fun bpeOnATinyVocabulary() {
        val vocab = mapOf("<|startoftext|>" to 0, "<|endoftext|>" to 1, "l" to 2, "o" to 3, "w</w>" to 4,
            "lo" to 5, "low</w>" to 6, "w" to 7, "o</w>" to 8)
        val t = ClipTokenizer(vocab, listOf("l" to "o", "lo" to "w</w>"), bosId = 0, eosId = 1, padId = 1, maxLength = 6)
        assertArrayEquals(intArrayOf(0, 6, 2, 8, 1, 1), t.encode("low lo")) // "lo" alone is l + o</w>: no merge
        assertArrayEquals(intArrayOf(0, 5, 3, 4, 1, 1), t.encode("LOOW")) // "lo" merges, then o, w</w>
    }
}
