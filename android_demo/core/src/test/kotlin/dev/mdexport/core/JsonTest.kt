package dev.mdexport.core

import dev.mdexport.core.TestSupport.assertThrows
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test

class JsonTest {
    @Suppress("UNCHECKED_CAST")
    private fun obj(text: String) = Json.parse(text) as Map<String, Any?>

    @Test fun nestedStructures() {
        val v = obj("""{"a": {"b": [1, [2, {"c": null}], {}], "d": []}, "e": true, "f": false}""")
        val a = v["a"] as Map<*, *>
        val b = a["b"] as List<*>
        assertEquals(1L, b[0])
        assertEquals(2L, (b[1] as List<*>)[0])
        assertTrue(((b[1] as List<*>)[1] as Map<*, *>).containsKey("c"))
        assertNull(((b[1] as List<*>)[1] as Map<*, *>)["c"])
        assertEquals(emptyMap<String, Any?>(), b[2])
        assertEquals(emptyList<Any?>(), a["d"])
        assertEquals(true, v["e"])
        assertEquals(false, v["f"])
        assertEquals(listOf("a", "e", "f"), v.keys.toList())
    }

    @Test fun escapes() {
        val s = Json.parse("\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t end\"")
        assertEquals("q\" b\\ s/ \b\u000C\n\r\t end", s)
    }

    @Test fun unicode() {
        assertEquals("é", Json.parse("\"\\u00e9\""))
        assertEquals("é€", Json.parse("\"é€\""))
        // U+1F431 (cat face) as an escaped surrogate pair and raw
        assertEquals("\uD83D\uDC31", Json.parse("\"\\ud83d\\udc31\""))
        assertEquals(0x1F431, (Json.parse("\"🐱\"") as String).codePointAt(0))
        assertEquals("Ġ", Json.parse("\"\\u0120\""))
    }

    @Test fun numbers() {
        assertEquals(0L, Json.parse("0"))
        assertEquals(-12L, Json.parse("-12"))
        assertEquals(9007199254740993L, Json.parse("9007199254740993"))
        assertEquals(0.18215, Json.parse("0.18215") as Double, 0.0)
        assertEquals(-1.5e-7, Json.parse("-1.5e-7") as Double, 0.0)
        assertEquals(1e300, Json.parse("1E+300") as Double, 0.0)
        assertEquals(100.0, Json.parse("1e2") as Double, 0.0)
        assertTrue(Json.parse("99999999999999999999") is Double)
        assertTrue((Json.parse("NaN") as Double).isNaN())
        assertEquals(Double.NEGATIVE_INFINITY, Json.parse("-Infinity"))
        assertEquals(Double.POSITIVE_INFINITY, Json.parse("Infinity"))
    }

    @Test fun rejectsMalformed() {
        for (bad in listOf("", "{", "[1,]", "{\"a\" 1}", "{'a': 1}", "01", "1.", ".5", "-", "1e", "tru", "\"abc",
                "\"\\x\"", "\"a\nb\"", "[1] 2", "{\"a\":1,}", "nul", "+1", "\"\\u12\"")) {
            assertThrows<JsonException> { Json.parse(bad) }
        }
    }

    @Test fun errorsCarryLineAndColumn() {
        val e = assertThrows<JsonException> { Json.parse("{\n  \"a\": [1, 2,,]\n}") }
        assertTrue(e.message, e.message!!.contains("line 2, column 14"))
    }

    @Test fun typedAccessNamesFileAndPath() {
        val o = Json.parseObject("""{"pipeline": {"latent_height": "64", "n": 3.0, "x": 3.5}}""", "manifest.json")
        val p = o.obj("pipeline")
        assertEquals(3, p.int("n"))
        val e = assertThrows<JsonException> { p.int("latent_height") }
        assertEquals("manifest.json: pipeline.latent_height: expected an integer, got \"64\"", e.message)
        val e2 = assertThrows<JsonException> { p.int("x") }
        assertTrue(e2.message!!.contains("pipeline.x"))
        val e3 = assertThrows<JsonException> { p.string("missing") }
        assertEquals("manifest.json: pipeline.missing: missing", e3.message)
    }

    @Test fun parsesTheRealVocab() {
        val vocab = Json.parseObject(java.io.File(TestSupport.tokenizerDir(), "vocab.json").readText(), "vocab.json")
        assertEquals(49408, vocab.map.size)
        assertEquals(49406L, vocab.raw("<|startoftext|>"))
        assertEquals(320L, vocab.raw("a</w>"))
    }
}
